"""Training RL agents, RLlib or stable-baselines3, through one interface, several at once on Ray.

An agent is named as in ``rl.agents`` (:func:`raytrade.config.parse_agent_name`): ``ppo``/``sac``/``td3``
train through RLlib's new API stack, ``sb3_<algo>`` through stable-baselines3. :func:`fit_agent` trains
one for ``rl.iterations`` iterations of ``rl.train_batch_size`` env steps on the TRAIN env, rolls the
deterministic policy through the VAL env after every iteration and keeps the iteration with the best
validation Sharpe (after costs). :func:`train_agents` runs one :func:`fit_agent` per agent as a Ray task
(``rl.cpus_per_agent`` CPUs each), so agents train in parallel across the cluster.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import RLConfig, parse_agent_name
from raytrade.evaluation.metrics import total_return
from raytrade.rl.ensemble import sharpe_or_zero
from raytrade.rl.policy import Policy

__all__ = ["AgentOutcome", "fit_agent", "policy_meta", "train_agents"]


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
              log: Callable[[str], None] | None = print) -> AgentOutcome:
    """Train agent ``name`` and score it on VAL after every iteration; keep the best iteration.

    Args:
        train_env, val_env: :class:`~raytrade_envs.TradingEnv` keyword arguments (:func:`raytrade.rl.env.env_config`);
            the VAL env should start at its first bar and run to the end (no random start).
        periods_per_year: bars per year, to annualise the validation Sharpe.
        feature_names: the scaled feature columns of the observation window (saved with the policy).
        checkpoint_dir: where to save the final training state; None = nowhere.
        log: called with one line per iteration (None = silent).

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
                log(f"[{name}] iteration {iteration}/{cfg.iterations}: {row['env_steps']} env steps, train episode "
                    f"return {row['train_episode_return_mean']:.4f}, val Sharpe {row['val_sharpe']:.2f}, "
                    f"val return {row['val_total_return']:+.2%} ({row['seconds']:.1f} s)")
        if checkpoint_dir is not None:
            checkpoint = str(trainer.save_checkpoint(Path(checkpoint_dir)))
    finally:
        trainer.stop()
    assert best is not None
    _, best_iteration, policy, positions, returns = best
    return AgentOutcome(name=name, backend=backend, algorithm=algorithm, policy=policy, history=pd.DataFrame(rows),
                        best_iteration=best_iteration, val_positions=positions, val_returns=returns,
                        checkpoint=checkpoint)


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
        tar.extractall(directory, filter="data")
    return directory


def _fit_agent_task(name: str, cfg: RLConfig, train_env: dict[str, Any], val_env: dict[str, Any],
                    periods_per_year: float, feature_names: Sequence[str], checkpoint_dir: str | None,
                    threads: int) -> dict[str, Any]:
    """Ray task body: :func:`fit_agent`, returning the policy as a packed directory (works across nodes)."""
    import torch

    torch.set_num_threads(threads)
    out = fit_agent(name, cfg, train_env, val_env, periods_per_year, feature_names, checkpoint_dir)
    with tempfile.TemporaryDirectory() as tmp:
        packed = _pack(out.policy.save(Path(tmp) / "policy"))
    return {"name": name, "backend": out.backend, "algorithm": out.algorithm, "policy": packed,
            "history": out.history.to_dict("records"), "best_iteration": out.best_iteration,
            "val_positions": out.val_positions, "val_returns": out.val_returns, "checkpoint": out.checkpoint,
            "worker_pid": out.worker_pid}


def train_agents(names: Sequence[str], cfg: RLConfig, train_env: dict[str, Any], val_env: dict[str, Any],
                 periods_per_year: float, feature_names: Sequence[str], out_dir: str | Path,
                 on_done: Callable[[AgentOutcome], None] | None = None) -> dict[str, AgentOutcome]:
    """Train every agent in ``names`` as its own Ray task, in parallel; policies saved to ``out_dir/<name>``.

    Each task reserves ``cfg.cpus_per_agent`` CPUs; RLlib agents with ``cfg.num_env_runners > 0`` also start
    that many env-runner actors. Per-iteration lines are printed by the tasks (Ray forwards them to the driver).
    ``on_done`` is called as each agent finishes. Returns ``{name: AgentOutcome}`` in the order of ``names``.

    Raises:
        ValueError: an unknown agent name (before anything starts).
        ray.exceptions.RayTaskError: an agent's training failed (the error names the agent's task).
    """
    import ray

    for name in names:
        parse_agent_name(name)
    out_dir = Path(out_dir)
    train_ref, val_ref = ray.put(train_env), ray.put(val_env)
    task = ray.remote(_fit_agent_task)
    pending = {
        task.options(num_cpus=cfg.cpus_per_agent, name=f"agent-{name}", max_retries=0).remote(
            name, cfg, train_ref, val_ref, periods_per_year, list(feature_names), str(out_dir / name / "checkpoint"),
            max(1, int(cfg.cpus_per_agent))): name
        for name in names
    }
    outcomes: dict[str, AgentOutcome] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        res = ray.get(done[0])
        policy = Policy.load(_unpack(res["policy"], out_dir / name / "policy"))
        outcomes[name] = AgentOutcome(name=name, backend=res["backend"], algorithm=res["algorithm"], policy=policy,
                                      history=pd.DataFrame(res["history"]), best_iteration=res["best_iteration"],
                                      val_positions=res["val_positions"], val_returns=res["val_returns"],
                                      checkpoint=res["checkpoint"], worker_pid=res["worker_pid"])
        if on_done is not None:
            on_done(outcomes[name])
    return {name: outcomes[name] for name in names}
