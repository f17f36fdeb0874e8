"""Training RL agents, RLlib or stable-baselines3, through one interface, several at once on Ray.

An agent is named as in ``rl.agents`` (:func:`raytrade.config.parse_agent_name`): ``ppo``/``sac``/``td3``
train through RLlib's new API stack, ``sb3_<algo>`` through stable-baselines3. :func:`fit_agent` trains
one for ``rl.iterations`` iterations of ``rl.train_batch_size`` env steps on the TRAIN env, rolls the
deterministic policy through the VAL env after every iteration and keeps the iteration with the best
validation Sharpe (after costs). With a :class:`RetrainPlan` it then keeps training window by window, as
FinRL's rolling ensemble retrains its agents, and keeps a policy per window. :func:`train_agents` runs one
:func:`fit_agent` per agent as a Ray task (``rl.cpus_per_agent`` CPUs each), so agents train in parallel
across the cluster; their per-iteration lines reach the driver through a Ray queue.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import RLConfig, parse_agent_name
from raytrade.evaluation.metrics import total_return
from raytrade.rl.ensemble import sharpe_or_zero
from raytrade.rl.policy import Policy

__all__ = ["AgentOutcome", "RetrainPlan", "fit_agent", "policy_meta", "train_agent_runs", "train_agents"]


@dataclass
class RetrainPlan:
    """Rolling retraining (FinRL): before trading window ``k``, train ``iterations`` more iterations on the
    bars ``[0, ends[k])`` of ``env`` (everything before that window's validation window), then keep a copy
    of the policy. Training continues from the previous state (weights, optimisers, replay buffer).

    Attributes:
        env: TradingEnv keyword arguments over all bars (train, val, test in order; random starts).
        ends: exclusive end bar of each window's training data, non-decreasing.
        iterations: iterations (of ``rl.train_batch_size`` env steps) per window.
    """

    env: dict[str, Any] = field(repr=False)
    ends: list[int]
    iterations: int = 1


@dataclass
class AgentOutcome:
    """A trained agent.

    Attributes:
        name, backend, algorithm: e.g. ``"sb3_td3"``, ``"sb3"``, ``"td3"``.
        policy: the best iteration's deterministic policy.
        history: one row per iteration: ``iteration``, ``env_steps``, ``train_episode_return_mean`` (sum of
            per-bar rewards), ``val_sharpe`` (annualised, 0 when undefined), ``val_total_return`` (fraction),
            ``seconds``.
        best_iteration: the iteration kept (highest ``val_sharpe``).
        val_positions, val_returns: the kept policy's positions and simple net returns on the VAL split.
        checkpoint: where the final training state was saved (RLlib algorithm checkpoint / SB3 zip), or None.
        worker_pid: the process it trained in (a Ray worker when run by :func:`train_agents`).
        window_policies: with a :class:`RetrainPlan`, the policy after retraining for each window.
    """

    name: str
    backend: str
    algorithm: str
    policy: Policy
    history: pd.DataFrame
    best_iteration: int
    val_positions: np.ndarray = field(repr=False)
    val_returns: np.ndarray = field(repr=False)
    checkpoint: str | None = None
    worker_pid: int = field(default_factory=os.getpid)
    window_policies: list[Policy] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        best = self.history.loc[self.history["iteration"] == self.best_iteration].iloc[0]
        return {"backend": self.backend, "algorithm": self.algorithm, "best_iteration": self.best_iteration,
                "val_sharpe": float(best["val_sharpe"]), "val_total_return": float(best["val_total_return"]),
                "env_steps": int(self.history["env_steps"].iloc[-1]),
                "train_seconds": float(self.history["seconds"].sum()), "checkpoint": self.checkpoint,
                "worker_pid": self.worker_pid, "history": self.history.to_dict("records")}


def policy_meta(cfg: RLConfig, algorithm: str, feature_names: Sequence[str]) -> dict[str, Any]:
    """The observation spec saved with every policy (see :class:`~raytrade.rl.policy.Policy`)."""
    return {"algorithm": algorithm, "window": cfg.window, "feature_names": list(feature_names),
            "forecast_inputs": list(cfg.forecast_inputs), "account_observation": True}


def _trainer(backend: str, algorithm: str, cfg: RLConfig, env_config: dict[str, Any], meta: dict[str, Any]):
    if backend == "sb3":
        from raytrade.rl.sb3_agents import SB3Trainer

        return SB3Trainer(algorithm, cfg, env_config, meta)
    from raytrade.rl.rllib_agents import RLlibTrainer

    return RLlibTrainer(algorithm, cfg, env_config, meta)


def fit_agent(name: str, cfg: RLConfig, train_env: dict[str, Any], val_env: dict[str, Any],
              periods_per_year: float, feature_names: Sequence[str], checkpoint_dir: str | Path | None = None,
              log: Callable[[str], None] | None = print, retrain: RetrainPlan | None = None) -> AgentOutcome:
    """Train agent ``name`` and score it on VAL after every iteration; keep the best iteration.

    Args:
        train_env, val_env: :class:`~raytrade_envs.TradingEnv` keyword arguments (:func:`raytrade.rl.env.env_config`);
            the VAL env should start at its first bar and run to the end (no random start).
        periods_per_year: bars per year, to annualise the validation Sharpe.
        feature_names: the scaled feature columns of the observation window (saved with the policy).
        checkpoint_dir: where to save the final training state; None = nowhere.
        log: called with one line per iteration (None = silent).
        retrain: then keep training window by window (:class:`RetrainPlan`); the policies land in
            ``window_policies``. The checkpoint is saved after the last window.

    Raises:
        ValueError: an unknown agent name.
    """
    from raytrade_envs import TradingEnv

    backend, algorithm = parse_agent_name(name)
    trainer = _trainer(backend, algorithm, cfg, train_env, policy_meta(cfg, algorithm, feature_names))
    rows: list[dict[str, Any]] = []
    best: tuple[float, int, Policy, np.ndarray, np.ndarray] | None = None
    checkpoint = None
    try:
        for iteration in range(1, cfg.iterations + 1):
            started = time.perf_counter()
            row: dict[str, Any] = {"iteration": iteration, **trainer.train_iteration()}
            policy = trainer.policy()
            positions, returns = policy.evaluate(TradingEnv(**val_env))
            row.update(val_sharpe=sharpe_or_zero(returns, periods_per_year), val_total_return=total_return(returns),
                       seconds=time.perf_counter() - started)
            rows.append(row)
            if best is None or row["val_sharpe"] > best[0]:
                best = (row["val_sharpe"], iteration, policy, positions, returns)
            if log is not None:
                ret = row["train_episode_return_mean"]
                # with many envs per runner an episode can span several iterations: none may have ended yet
                train = f"train episode return {ret:.4f}" if np.isfinite(ret) else "no training episode ended yet"
                log(f"[{name}] iteration {iteration}/{cfg.iterations}: {row['env_steps']} env steps, {train}, "
                    f"val Sharpe {row['val_sharpe']:.2f}, val return {row['val_total_return']:+.2%} "
                    f"({row['seconds']:.1f} s)")
        window_policies = _retrain(name, trainer, retrain, log) if retrain is not None else []
        if checkpoint_dir is not None:
            checkpoint = str(trainer.save_checkpoint(Path(checkpoint_dir)))
    finally:
        trainer.stop()
    assert best is not None
    _, best_iteration, policy, positions, returns = best
    return AgentOutcome(name=name, backend=backend, algorithm=algorithm, policy=policy, history=pd.DataFrame(rows),
                        best_iteration=best_iteration, val_positions=positions, val_returns=returns,
                        checkpoint=checkpoint, window_policies=window_policies)


def _retrain(name: str, trainer: Any, plan: RetrainPlan, log: Callable[[str], None] | None) -> list[Policy]:
    from raytrade.rl.env import slice_env

    policies = []
    for k, end in enumerate(plan.ends):
        started = time.perf_counter()
        trainer.set_train_env(slice_env(plan.env, 0, end))
        for _ in range(plan.iterations):
            trainer.train_iteration()
        policies.append(trainer.policy())
        if log is not None:
            log(f"[{name}] retrained for window {k + 1}/{len(plan.ends)} on bars [0, {end}) "
                f"({time.perf_counter() - started:.1f} s)")
    return policies


def _pack(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def _unpack(data: bytes, directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library's safe extraction
            tar.extractall(directory, filter="data")
        else:  # Python 3.11.0-3.11.3 (e.g. Debian 12's 3.11.2): the same rule for what _pack writes
            members = tar.getmembers()
            unsafe = [m.name for m in members if not (m.isfile() or m.isdir())
                      or Path(m.name).is_absolute() or ".." in Path(m.name).parts]
            if unsafe:
                raise ValueError(f"packed policy holds unsafe entries: {unsafe[:5]}")
            tar.extractall(directory, members=members)
    return directory


def _fit_agent_task(name: str, cfg: RLConfig, train_env: dict[str, Any], val_env: dict[str, Any],
                    periods_per_year: float, feature_names: Sequence[str], checkpoint_dir: str | None,
                    threads: int, retrain: RetrainPlan | None, lines: Any) -> dict[str, Any]:
    """Ray task body: :func:`fit_agent` with ``threads`` torch intra-op threads (Ray reuses worker processes, so
    without this the count would be whatever the process had), log lines to the ``lines`` queue; returns the
    policies as packed directories (works across nodes)."""
    import torch

    torch.set_num_threads(threads)
    out = fit_agent(name, cfg, train_env, val_env, periods_per_year, feature_names, checkpoint_dir,
                    log=lines.put, retrain=retrain)
    with tempfile.TemporaryDirectory() as tmp:
        packed = [_pack(p.save(Path(tmp) / str(k))) for k, p in enumerate([out.policy, *out.window_policies])]
    return {"name": name, "backend": out.backend, "algorithm": out.algorithm, "policies": packed,
            "history": out.history.to_dict("records"), "best_iteration": out.best_iteration,
            "val_positions": out.val_positions, "val_returns": out.val_returns, "checkpoint": out.checkpoint,
            "worker_pid": out.worker_pid}


def train_agents(names: Sequence[str], cfg: RLConfig, train_env: dict[str, Any], val_env: dict[str, Any],
                 periods_per_year: float, feature_names: Sequence[str], out_dir: str | Path,
                 on_done: Callable[[AgentOutcome], None] | None = None, on_log: Callable[[str], None] | None = None,
                 retrain: RetrainPlan | None = None) -> dict[str, AgentOutcome]:
    """Train every agent in ``names`` as its own Ray task, in parallel; policies saved to ``out_dir/<name>/policy``
    (and ``out_dir/<name>/window_<k>`` with ``retrain``).

    Each task reserves ``cfg.cpus_per_agent`` CPUs and ``cfg.resources_per_agent``; RLlib agents with
    ``cfg.num_env_runners > 0`` also start that many env-runner actors (each with
    ``cfg.resources_per_env_runner``). The tasks' per-iteration lines come back through a ``ray.util.queue.Queue``
    and go to ``on_log`` as they arrive (None = dropped); ``on_done`` is called as each agent finishes.
    Returns ``{name: AgentOutcome}`` in the order of ``names``.

    Reproducible on CPU (README "Reproducibility"): each agent is seeded from ``cfg.seed`` and its task pins
    torch to ``max(1, int(cfg.cpus_per_agent))`` intra-op threads (the thread count changes float reduction
    order), so the outcomes do not depend on which Ray worker process runs which agent, or in what order.

    Raises:
        ValueError: an unknown agent name (before anything starts).
        ray.exceptions.RayTaskError: an agent's training failed (the error names the agent's task).
    """
    return train_agent_runs({name: (name, cfg) for name in names}, train_env, val_env, periods_per_year,
                            feature_names, out_dir, on_done=on_done, on_log=on_log, retrain=retrain)


def train_agent_runs(runs: Mapping[str, tuple[str, RLConfig]], train_env: dict[str, Any], val_env: dict[str, Any],
                     periods_per_year: float, feature_names: Sequence[str], out_dir: str | Path,
                     on_done: Callable[[AgentOutcome], None] | None = None,
                     on_log: Callable[[str], None] | None = None,
                     retrain: RetrainPlan | None = None) -> dict[str, AgentOutcome]:
    """:func:`train_agents` for runs that differ in more than the agent, e.g. the same agents under several seeds:
    ``runs`` maps a run key (a relative path such as ``"seed_1/ppo"``) to ``(agent name, its RLConfig)``; every
    run is one Ray task named ``agent-<key>`` (``cfg.cpus_per_agent`` CPUs and ``cfg.resources_per_agent`` of its
    own config), all submitted at once, so Ray runs as many side by side as the cluster has CPUs. Policies land in
    ``out_dir/<key>/policy`` (and ``window_<k>``). Returns ``{key: AgentOutcome}`` in the order of ``runs``.

    Raises:
        ValueError: an unknown agent name (before anything starts).
        ray.exceptions.RayTaskError: a run's training failed (the error names its task).
    """
    import ray

    for name, _ in runs.values():
        parse_agent_name(name)
    from ray.util.queue import Queue

    out_dir = Path(out_dir)
    train_ref, val_ref, plan_ref = ray.put(train_env), ray.put(val_env), ray.put(retrain)
    lines = Queue(actor_options={"num_cpus": 0})

    def drain() -> None:
        while not lines.empty():
            line = lines.get_nowait()
            if on_log is not None:
                on_log(line)

    task = ray.remote(_fit_agent_task)
    pending = {
        task.options(num_cpus=cfg.cpus_per_agent, resources=cfg.resources_per_agent or None, name=f"agent-{key}",
                     max_retries=0).remote(
            name, cfg, train_ref, val_ref, periods_per_year, list(feature_names), str(out_dir / key / "checkpoint"),
            max(1, int(cfg.cpus_per_agent)), plan_ref, lines): key
        for key, (name, cfg) in runs.items()
    }
    outcomes: dict[str, AgentOutcome] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            drain()
            if not done:
                continue
            key = pending.pop(done[0])
            res = ray.get(done[0])
            policy, *window_policies = [
                Policy.load(_unpack(packed, out_dir / key / ("policy" if k == 0 else f"window_{k - 1}")))
                for k, packed in enumerate(res["policies"])]
            outcomes[key] = AgentOutcome(
                name=res["name"], backend=res["backend"], algorithm=res["algorithm"], policy=policy,
                history=pd.DataFrame(res["history"]), best_iteration=res["best_iteration"],
                val_positions=res["val_positions"], val_returns=res["val_returns"], checkpoint=res["checkpoint"],
                worker_pid=res["worker_pid"], window_policies=window_policies)
            if on_done is not None:
                on_done(outcomes[key])
        drain()
    finally:
        lines.shutdown()
    return {key: outcomes[key] for key in runs}
