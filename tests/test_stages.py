"""The forecaster stages end to end, as users run them: ``raytrade train|tune|walk-forward`` and
``python jobs/<stage>.py`` on the smoke config (real bars, real Ray, a temporary MLflow store).

The jobs path and the CLI path call the same stage functions; each stage runs once per path here so
that both entry points are exercised without running every stage twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BUNDLED, REPO, smoke_config_on_more_bars

pytestmark = pytest.mark.ray  # every stage here runs as a subprocess CLI/job with its own local Ray

SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
# the installed console script, next to this interpreter (the venv need not be on PATH, e.g. under `make test`)
RAYTRADE = str(Path(sys.executable).parent / "raytrade")


def _run(argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def _config(tmp: Path, **sections) -> Path:
    """The smoke config with ``output_dir`` in ``tmp`` and section overrides, as a YAML file."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["output_dir"] = str(tmp)
    raw["data"]["path"] = str(BUNDLED)
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _report(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("report: ")][-1]
    return json.loads(Path(line.removeprefix("report: ")).read_text())


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A champion registered by ``jobs/train_forecaster.py`` (the jobs path of ``raytrade train``)."""
    tmp = tmp_path_factory.mktemp("stages")
    config = _config(tmp, train={"epochs": 2})
    report = _report(_run([sys.executable, "jobs/train_forecaster.py", "--config", str(config)]).stdout)
    return {"tmp": tmp, "config": config, "train": report}


def test_train_job_registers_a_champion_bundle(registry):
    from raytrade import tracking
    from raytrade.models.bundle import ForecasterBundle

    report = registry["train"]
    assert [row["epoch"] for row in report["forecaster_metrics"]["epochs"]] == [1, 2]
    assert report["forecaster_metrics"]["model"] == "cnn_lstm"
    bundle, version, run_id = tracking.load_model_dir("raytrade-forecaster", "champion",
                                                      report["mlflow"]["tracking_uri"])
    assert isinstance(bundle, ForecasterBundle) and version == report["model_versions"]["forecaster"]
    assert run_id == report["mlflow_run_ids"]["forecaster"]
    assert bundle.scaler.fit_end == report["data"]["scaler_fit_end"] < report["data"]["split_ranges"]["val"][0]


@pytest.mark.slow  # about 1 minute: two Tune trials through the CLI (make test-slow; CI runs it)
def test_tune_cli_logs_every_trial_and_promotes_only_a_better_model(registry):
    from mlflow.tracking import MlflowClient

    from raytrade import tracking

    proc = _run([RAYTRADE, "tune", "--config", str(registry["config"])])
    report = _report(proc.stdout)
    assert report["n_trials"] == 2 and not report["failed_trials"]
    trials = (Path(report["run_dir"]) / "trials.csv").read_text().splitlines()
    assert len(trials) == 3  # header + 2 trials
    champion_before = report["champion_before"]
    assert champion_before["version"] == registry["train"]["model_versions"]["forecaster"]
    better = report["candidate"]["val_nll"] < champion_before["val_nll"]
    assert report["promoted"] == better
    uri = report["tracking_uri"]
    expected = report["candidate"]["version"] if better else champion_before["version"]
    assert tracking.aliased_version(uri, "raytrade-forecaster", "champion") == expected
    # Ray's MLflowLoggerCallback logged one MLflow run per trial, with its hyperparameters and epochs
    tracking.use_tracking_uri(uri)
    exp = MlflowClient().get_experiment_by_name("raytrade")
    runs = MlflowClient().search_runs([exp.experiment_id], filter_string="tags.`raytrade.stage` = 'tune'")
    assert len(runs) == 2
    assert all("learning_rate" in r.data.params and "val_nll" in r.data.metrics for r in runs)


@pytest.mark.slow  # about 3 minutes: in make test-slow (CI runs it), out of the default loop
def test_walk_forward_job_hybrid_and_baselines_out_of_sample(tmp_path):
    # the hybrid, a deep baseline and the non-deep one (each fold x model is a Ray Train fit, ~25 s here; LSTM and
    # GRU go through the same registry and loop, and test_model.py covers them)
    models = ["cnn_lstm", "transformer", "linear"]
    config = _config(tmp_path, walk_forward={"n_folds": 2, "n_bootstrap": 100, "models": models},
                     train={"epochs": 1})
    report = _report(_run([sys.executable, "jobs/walk_forward.py", "--config", str(config)]).stdout)
    assert list(report["pooled"]) == [*models, "buy_and_hold"]
    for model in models:
        for metric in ("accuracy", "macro_f1", "directional_accuracy", "return_mae", "return_rmse", "ic",
                       "rank_ic", "sharpe"):
            cell = report["pooled"][model][metric]
            assert cell["ci_low"] <= cell["value"] <= cell["ci_high"], (model, metric, cell)
    assert report["pooled"]["buy_and_hold"]["accuracy"]["value"] is None
    folds = report["folds"]
    # expanding, embargoed, chronological: train|val|test separated by the embargo; test blocks in order
    for f in folds:
        assert f["train"][1] + report["embargo_bars"] <= f["val"][0]
        assert f["val"][1] + report["embargo_bars"] <= f["test"][0]
        assert f["train"][0] == 0
    assert folds[0]["train"][1] < folds[1]["train"][1] and folds[0]["test"][1] == folds[1]["test"][0]
    assert folds[0]["test_last"] < folds[1]["test_first"]
    table = (Path(report["run_dir"]) / "walk_forward.md").read_text()
    assert all(f"| {m} |" in table for m in [*models, "buy_and_hold"])


@pytest.mark.slow  # about 1.5 minutes: a Ray Train fit through the CLI (make test-slow; CI runs it)
def test_cli_train_of_a_baseline(tmp_path):
    config = _config(tmp_path, train={"epochs": 1})
    report = _report(_run([RAYTRADE, "train", "--config", str(config), "--set", "model.name=gru"]).stdout)
    assert report["forecaster_metrics"]["model"] == "gru"


def test_cli_train_names_a_bad_model_in_one_line(tmp_path):
    config = _config(tmp_path, train={"epochs": 1})
    bad = subprocess.run([RAYTRADE, "train", "--config", str(config), "--set", "model.name=resnet"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "model.name" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_agents_stage_refuses_a_champion_trained_on_another_split(smoke_run, tmp_path):
    """``raytrade agents`` on longer data (500 more bars: the train split ends elsewhere) with the champion's
    feature columns: it stops with ``raytrade backtest``'s one-line error instead of running agents on the
    champion's outputs for bars it trained on. Reuses the session's smoke run and stops before any training."""
    from raytrade.errors import ConfigError
    from raytrade.stages.agents import run_agents

    with pytest.raises(ConfigError, match=r"^split: raytrade-forecaster@champion \(version 1\) was trained on bars "
                                          r"up to .* but this config's train split ends at "):
        run_agents(smoke_config_on_more_bars(smoke_run, tmp_path))


@pytest.mark.slow  # about 3.5 minutes: eight agents, each retrained per ensemble window (make test-slow; CI runs it)
def test_cli_agents_trains_rllib_and_sb3_agents_in_parallel_on_the_champion_forecaster(registry):
    """``raytrade agents`` with PPO, SAC and TD3 through RLlib and through stable-baselines3 (+ A2C, DDPG): each
    trains as its own Ray task on the registered champion's outputs, reports each iteration to the driver, is
    scored on VAL, retrained per window for ``rolling_retrain``, registered in MLflow, and backtested."""
    from raytrade import tracking
    from raytrade.rl.policy import Policy

    raw = yaml.safe_load(registry["config"].read_text())
    agents = ["ppo", "sac", "td3", "sb3_ppo", "sb3_sac", "sb3_td3", "sb3_a2c", "sb3_ddpg"]
    raw["rl"] = {**raw["rl"], "agents": agents, "cpus_per_agent": 0.5}
    raw["ensemble"] = {**raw["ensemble"], "methods": ["rolling", "rolling_retrain"]}  # no vote: still "ensemble"
    config = registry["tmp"] / "agents.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = _run([RAYTRADE, "agents", "--config", str(config)])
    report = _report(proc.stdout)
    uri = report["mlflow"]["tracking_uri"]
    assert report["forecaster_version"] == tracking.aliased_version(uri, "raytrade-forecaster", "champion")
    assert set(report["strategies"]) == {"buy_and_hold", "forecaster", *agents, "ensemble_rolling",
                                         "ensemble_rolling_retrain", "ensemble"}
    n_windows = len(report["backtest"]["ensembles"]["rolling_retrain"]["window_starts"])
    pids = set()
    for agent in agents:
        backend, algorithm = ("sb3", agent.removeprefix("sb3_")) if agent.startswith("sb3_") else ("rllib", agent)
        summary = report["rl_metrics"][agent]
        assert summary["backend"] == backend and summary["algorithm"] == algorithm
        assert summary["env_steps"] >= raw["rl"]["train_batch_size"] and len(summary["history"]) == 1
        assert f"[{agent}] iteration 1/1" in proc.stderr
        assert f"[{agent}] retrained for window {n_windows}/{n_windows}" in proc.stderr
        pids.add(summary["worker_pid"])
        policy, version, _ = tracking.load_model_dir(f"raytrade-agent-{agent.replace('_', '-')}", "champion", uri)
        local = Policy.load(Path(report["run_dir"]) / "agents" / agent / "policy")
        obs = np.random.default_rng(0).normal(size=(4, local.obs_dim)).astype(np.float32)
        np.testing.assert_allclose(policy.act(obs), local.act(obs), rtol=1e-6)
        assert np.all(np.abs(policy.act(obs)) <= 1.0)
    assert os.getpid() not in pids  # trained in Ray worker processes, not in the driver
    for name, metrics in report["strategies"].items():
        assert np.isfinite(metrics["sharpe"]) or metrics["annual_volatility"] == 0, name
