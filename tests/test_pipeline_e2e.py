"""Fast end-to-end smoke test of the whole pipeline on real bars: the report, the split, the registry.

One pipeline run for the session (``smoke_run`` in conftest: jobs/configs/smoke.yaml, last 3,000 BTC/USD
bars, 2 epochs, one short iteration of RLlib PPO, SAC and TD3 trained in parallel as Ray tasks) with a
temporary MLflow store; tests/test_serving.py serves the models it registered over HTTP.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import smoke_config_on_more_bars
from raytrade.evaluation import SUMMARY_KEYS

STRATEGY_KEYS = {"total_return", "annual_return", "annual_volatility", "sharpe", "max_drawdown", "hit_rate", "turnover"}


def test_report_contract(smoke_run):
    report = smoke_run["report"]
    on_disk = json.loads((smoke_run["run_dir"] / "report.json").read_text())
    assert on_disk["strategies"] == report["strategies"]
    assert set(report["strategies"]) == {"buy_and_hold", "forecaster", "ppo", "sac", "td3", "ensemble_rolling",
                                         "ensemble_rolling_retrain", "ensemble_vote", "ensemble"}
    # the report contract's "ensemble" is the served one: the Sharpe vote through the risk layer
    assert report["strategies"]["ensemble"] == report["strategies"]["ensemble_vote"]
    for name, metrics in report["strategies"].items():
        assert STRATEGY_KEYS <= set(metrics), name
        assert set(metrics) == set(SUMMARY_KEYS)
        assert all(np.isfinite(v) for v in metrics.values()), name
    bh = report["strategies"]["buy_and_hold"]
    # one entry (of 1 / (1 + cost) of the equity: the rest pays for it), then held: a 100% long never drifts
    cost = smoke_run["cfg"].backtest.cost_bps * 1e-4
    assert bh["turnover"] == pytest.approx(1.0 / (1.0 + cost) / bh["n_bars"], rel=1e-12)
    assert {"accuracy", "log_loss", "ic"} <= set(report["forecaster_metrics"]["test"])
    assert set(report["mlflow_run_ids"]) >= {"forecaster", "ppo", "sac", "td3", "backtest"}
    # every agent trained, was scored on VAL after its iteration, and is registered
    for agent in ("ppo", "sac", "td3"):
        rl = report["rl_metrics"][agent]
        assert rl["backend"] == "rllib" and rl["algorithm"] == agent
        assert rl["env_steps"] >= smoke_run["cfg"].rl.train_batch_size and np.isfinite(rl["val_sharpe"])
        assert report["model_versions"][agent] == "1"
    # the FinRL-style table (cumulative/annual return, volatility, Sharpe, max drawdown) is in the report
    table = report["backtest"]["table"]
    assert all(h in table for h in ("total_ret%", "annual_ret%", "annual_vol%", "sharpe", "max_dd%"))
    assert all(f"{name} " in table for name in report["strategies"] if name != "ensemble")
    ens = report["backtest"]["ensembles"]
    assert set(ens) == {"rolling", "rolling_retrain", "vote"}
    for method in ens.values():
        assert method["window_starts"][0] == 0 and len(method["weights"]) == len(method["window_starts"])
        assert all(sum(w.values()) == pytest.approx(1.0) for w in method["weights"])
    assert set(ens["rolling"]["weights"][0]) == {"forecaster", "ppo", "sac", "td3"}


def test_rolling_retrain_trains_before_validating_before_trading(smoke_run):
    """FinRL with retraining: per window, every agent retrained on bars before its validation window, the best
    on that window trades it; the retrained policies are kept per window."""
    report, cfg = smoke_run["report"], smoke_run["cfg"]
    ens = report["backtest"]["ensembles"]["rolling_retrain"]
    n_windows = len(ens["window_starts"])
    assert n_windows >= 3 and ens["window_starts"] == ens["window_starts"][:1] + [
        k * cfg.ensemble.window_bars for k in range(1, n_windows)]
    assert ens["first_bar"][0] == report["backtest"]["first_bar"]
    for k in range(n_windows):
        trained, first = pd.Timestamp(ens["trained_through"][k]), pd.Timestamp(ens["first_bar"][k])
        val_first, val_last = (pd.Timestamp(t) for t in ens["validated_on"][k])
        assert trained < val_first <= val_last < first
        assert (val_last - val_first) >= (cfg.ensemble.window_bars - 1) * pd.Timedelta(hours=1)
        sharpe = ens["validation_sharpe"][k]
        assert set(sharpe) == {"ppo", "sac", "td3"}
        best = max(sharpe, key=sharpe.get)
        assert ens["weights"][k] == {name: float(name == best) for name in sharpe}
    for agent in ("ppo", "sac", "td3"):
        dirs = sorted(p.name for p in (smoke_run["run_dir"] / "agents" / agent).glob("window_*"))
        assert len(dirs) == n_windows
    assert report["data"]["symbol"] == "BTC/USD" and report["data"]["bars"] == 3000


def test_split_in_report_is_chronological_with_embargo(smoke_run):
    data = smoke_run["report"]["data"]
    cfg = smoke_run["cfg"]
    ranges = {k: [pd.Timestamp(t) for t in v] for k, v in data["split_ranges"].items()}
    bar = pd.Timedelta(hours=1)
    assert data["embargo_bars"] >= cfg.labels.horizon + cfg.model.lookback
    assert ranges["val"][0] - ranges["train"][1] > data["embargo_bars"] * bar
    assert ranges["test"][0] - ranges["val"][1] > data["embargo_bars"] * bar
    assert pd.Timestamp(data["scaler_fit_end"]) == ranges["train"][1]
    assert data["scaler_fit_rows"] == data["split_rows"]["train"]
    assert pd.Timestamp(smoke_run["report"]["backtest"]["first_bar"]) >= ranges["test"][0]


def test_checkpoint_per_epoch_and_registry_aliases(smoke_run):
    from raytrade import tracking
    from raytrade.models.bundle import ForecasterBundle
    from raytrade.rl.policy import Policy

    ckpts = sorted(p.name for p in (smoke_run["run_dir"] / "ray_train" / "forecaster").glob("epoch_*"))
    assert ckpts == ["epoch_0001", "epoch_0002"]
    uri = smoke_run["report"]["mlflow"]["tracking_uri"]
    bundle, version, run_id = tracking.load_model_dir("raytrade-forecaster", "champion", uri)
    assert isinstance(bundle, ForecasterBundle) and version == "1"
    assert run_id == smoke_run["report"]["mlflow_run_ids"]["forecaster"]
    policy, _, _ = tracking.load_model_dir("raytrade-agent-ppo", "champion", uri)
    local = Policy.load(smoke_run["run_dir"] / "agents" / "ppo" / "policy")
    obs = np.random.default_rng(0).normal(size=(5, local.obs_dim)).astype(np.float32)
    np.testing.assert_allclose(policy.act(obs), local.act(obs), rtol=1e-6)
    from raytrade.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        tracking.load_model_dir("raytrade-forecaster", "no-such-alias", uri)


def test_pipeline_deploys_the_ensemble_and_records_its_answers(smoke_run):
    serve = smoke_run["report"]["serve"]
    assert serve["health"] == {"status": "ok"}
    assert serve["models"]["forecaster"]["version"] == "1"
    assert len(serve["responses"]) == smoke_run["cfg"].serve.n_requests
    for body in serve["responses"]:
        assert body["signal"] in {"buy", "hold", "sell"} and -1 <= body["target_position"] <= 1
        assert body["model_versions"] == {"forecaster": "1", "ppo": "1", "sac": "1", "td3": "1"}


def test_pipeline_run_writes_the_html_report_with_every_figure_embedded(smoke_run):
    import base64
    import re
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    report, run_dir = smoke_run["report"], smoke_run["run_dir"]
    expected = {"equity", "drawdown", "rolling_sharpe", "confusion_matrix", "training_curves"}
    assert set(report["figures"]) == expected
    page = (run_dir / "report.html").read_text()
    embedded = re.findall(r'<figure id="(\w+)"><img alt="\w+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert {name for name, _ in embedded} == expected
    for name, data in embedded:  # the very bytes of the PNG in the run directory
        assert base64.b64decode(data) == Path(report["figures"][name]).read_bytes()
    assert not re.search(r"<script|<link|src=\"http", page)  # self-contained
    assert all(name in page for name in report["strategies"])
    # the confusion matrix counts every test window of the forecaster once
    counts = np.array(report["forecaster_metrics"]["test_confusion"]["counts"])
    n_windows = report["data"]["split_rows"]["test"] - smoke_run["cfg"].model.lookback + 1
    assert counts.shape == (3, 3) and counts.sum() == n_windows
    # MLflow holds the figures and the page on the backtest run
    client = MlflowClient(report["mlflow"]["tracking_uri"])
    run_id = report["mlflow_run_ids"]["backtest"]
    assert {Path(f.path).name for f in client.list_artifacts(run_id, "figures")} == {f"{n}.png" for n in expected}
    assert "report.html" in {f.path for f in client.list_artifacts(run_id)}
    # `raytrade report RUN` prints its path: by directory, by name under --runs, and the latest
    cli = [str(Path(sys.executable).parent / "raytrade"), "report"]
    runs = str(run_dir.parent)
    for args in ([str(run_dir)], [run_dir.name, "--runs", runs], ["latest", "--runs", runs]):
        out = subprocess.run(cli + args, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == str(run_dir / "report.html"), (args, out.stderr)
    out = subprocess.run(cli + ["nope", "--runs", str(run_dir.parent)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("error: no run directory 'nope'")


def test_backtest_stage_reproduces_the_pipelines_backtest_from_the_registered_models(smoke_run, tmp_path):
    """`raytrade backtest` loads forecaster and agents @champion from MLflow (no training) and gets the same
    test-split metrics as the pipeline that trained them: same bars, same models, same seeded MC dropout."""
    from raytrade.stages.backtest import run_backtest

    cfg = smoke_run["cfg"].model_copy(update={"output_dir": tmp_path})
    report = run_backtest(cfg)
    pipeline = smoke_run["report"]["strategies"]
    assert "ensemble_rolling_retrain" not in report["strategies"]  # needs training: left out, and said so
    for name in ("buy_and_hold", "forecaster", "ppo", "sac", "td3", "ensemble_rolling", "ensemble_vote", "ensemble"):
        for key, value in pipeline[name].items():
            assert report["strategies"][name][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    assert report["model_versions"] == {k: smoke_run["report"]["model_versions"][k]
                                        for k in ("forecaster", "ppo", "sac", "td3")}
    assert set(report["figures"]) == {"equity", "drawdown", "rolling_sharpe", "confusion_matrix"}
    assert (tmp_path / report["run_dir"].split("/")[-1] / "report.html").is_file()


def test_backtest_stage_refuses_a_split_the_registered_models_were_not_trained_on(smoke_run, tmp_path):
    """Another train split (here: 500 more bars at the start) moves val and test: the registered models could
    have trained or been selected on the new "test" bars, so the stage refuses instead of reporting it."""
    from raytrade.errors import ConfigError
    from raytrade.stages.backtest import run_backtest

    with pytest.raises(ConfigError, match=r"^split: raytrade-forecaster@champion \(version 1\) was trained on bars "
                                          r"up to .* but this config's train split ends at "):
        run_backtest(smoke_config_on_more_bars(smoke_run, tmp_path))


def test_deploying_without_registered_models_names_them_before_starting_serve(tmp_path):
    from conftest import REPO
    from raytrade.config import load_config
    from raytrade.errors import ModelNotFoundError
    from raytrade.serving.deploy import deploy_ensemble

    cfg = load_config(REPO / "jobs" / "configs" / "smoke.yaml", {"output_dir": str(tmp_path)})
    with pytest.raises(ModelNotFoundError, match="raytrade-forecaster@champion, raytrade-agent-ppo@champion, "
                                                 "raytrade-agent-sac@champion, raytrade-agent-td3@champion"):
        deploy_ensemble(cfg)
