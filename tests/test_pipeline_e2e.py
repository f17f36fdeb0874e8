"""Fast end-to-end smoke test of the whole pipeline on real bars, then real HTTP against Ray Serve.

One pipeline run (jobs/configs/smoke.yaml: last 3,000 BTC/USD bars, 2 epochs, one short iteration of
RLlib PPO, SAC and TD3 each, trained in parallel as Ray tasks)
with a temporary MLflow store; the Serve app it deploys stays up for the HTTP contract tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import BUNDLED, REPO, free_port
from raytrade.config import load_config
from raytrade.data import load_bars
from raytrade.evaluation import SUMMARY_KEYS
from raytrade.pipeline import request_payload

STRATEGY_KEYS = {"total_return", "annual_return", "annual_volatility", "sharpe", "max_drawdown", "hit_rate", "turnover"}


@pytest.fixture(scope="module")
def smoke(ray_local, redis_server, tmp_path_factory):
    from ray import serve

    from raytrade.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("smoke")
    port = free_port()
    cfg = load_config(REPO / "jobs" / "configs" / "smoke.yaml", overrides={
        "output_dir": str(out),
        "train": {"epochs": 2},
        "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},
        "serve": {"port": port, "shutdown": False, "config": str(REPO / "serve_configs" / "ensemble.yaml")},
        "data": {"path": str(BUNDLED), "max_bars": 3000},
        "store": {"enabled": True, "url": redis_server, "prefix": "e2e"},
    })
    report = run_pipeline(cfg)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    yield {"report": report, "cfg": cfg, "client": client, "run_dir": Path(report["run_dir"])}
    client.close()
    serve.shutdown()


def test_report_contract(smoke):
    report = smoke["report"]
    on_disk = json.loads((smoke["run_dir"] / "report.json").read_text())
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
    assert bh["turnover"] == pytest.approx(1.0 / bh["n_bars"])  # one entry, then held
    assert {"accuracy", "log_loss", "ic"} <= set(report["forecaster_metrics"]["test"])
    assert set(report["mlflow_run_ids"]) >= {"forecaster", "ppo", "sac", "td3", "backtest"}
    # every agent trained, was scored on VAL after its iteration, and is registered
    for agent in ("ppo", "sac", "td3"):
        rl = report["rl_metrics"][agent]
        assert rl["backend"] == "rllib" and rl["algorithm"] == agent
        assert rl["env_steps"] >= smoke["cfg"].rl.train_batch_size and np.isfinite(rl["val_sharpe"])
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


def test_rolling_retrain_trains_before_validating_before_trading(smoke):
    """FinRL with retraining: per window, every agent retrained on bars before its validation window, the best
    on that window trades it; the retrained policies are kept per window."""
    report, cfg = smoke["report"], smoke["cfg"]
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
        dirs = sorted(p.name for p in (smoke["run_dir"] / "agents" / agent).glob("window_*"))
        assert len(dirs) == n_windows
    assert report["data"]["symbol"] == "BTC/USD" and report["data"]["bars"] == 3000


def test_split_in_report_is_chronological_with_embargo(smoke):
    data = smoke["report"]["data"]
    cfg = smoke["cfg"]
    ranges = {k: [pd.Timestamp(t) for t in v] for k, v in data["split_ranges"].items()}
    bar = pd.Timedelta(hours=1)
    assert data["embargo_bars"] >= cfg.labels.horizon + cfg.model.lookback
    assert ranges["val"][0] - ranges["train"][1] > data["embargo_bars"] * bar
    assert ranges["test"][0] - ranges["val"][1] > data["embargo_bars"] * bar
    assert pd.Timestamp(data["scaler_fit_end"]) == ranges["train"][1]
    assert data["scaler_fit_rows"] == data["split_rows"]["train"]
    assert pd.Timestamp(smoke["report"]["backtest"]["first_bar"]) >= ranges["test"][0]


def test_checkpoint_per_epoch_and_registry_aliases(smoke):
    from raytrade import tracking
    from raytrade.models.bundle import ForecasterBundle
    from raytrade.rl.policy import Policy

    ckpts = sorted(p.name for p in (smoke["run_dir"] / "ray_train" / "forecaster").glob("epoch_*"))
    assert ckpts == ["epoch_0001", "epoch_0002"]
    uri = smoke["report"]["mlflow"]["tracking_uri"]
    bundle, version, run_id = tracking.load_model_dir("raytrade-forecaster", "champion", uri)
    assert isinstance(bundle, ForecasterBundle) and version == "1"
    assert run_id == smoke["report"]["mlflow_run_ids"]["forecaster"]
    policy, _, _ = tracking.load_model_dir("raytrade-agent-ppo", "champion", uri)
    local = Policy.load(smoke["run_dir"] / "agents" / "ppo" / "policy")
    obs = np.random.default_rng(0).normal(size=(5, local.obs_dim)).astype(np.float32)
    np.testing.assert_allclose(policy.act(obs), local.act(obs), rtol=1e-6)
    from raytrade.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        tracking.load_model_dir("raytrade-forecaster", "no-such-alias", uri)


def _payload(n_bars: int = 360, position: float = 0.0) -> dict:
    """The last ``n_bars`` real bars (feature warm-up 263 + lookback 32 = 295 are needed)."""
    bars = load_bars(BUNDLED, max_bars=600)
    return request_payload(bars, bars["timestamp"].iloc[-1], n_bars, position)


def test_health_and_models(smoke):
    c = smoke["client"]
    assert c.get("/health").json() == {"status": "ok"}
    models = c.get("/models").json()
    assert models["forecaster"]["name"] == "raytrade-forecaster" and models["forecaster"]["version"] == "1"
    assert {a: m["version"] for a, m in models["agents"].items()} == {"ppo": "1", "sac": "1", "td3": "1"}


def test_predict_contract_and_same_features_as_training(smoke):
    from raytrade import tracking
    from raytrade.rl.ensemble import combine_positions

    payload = _payload(position=0.25)
    resp = smoke["client"].post("/predict", json=payload)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"symbol", "timestamp", "signal", "target_position", "confidence", "forecast", "agents",
                         "model_versions"}
    assert body["symbol"] == "BTC/USD" and body["signal"] in {"buy", "hold", "sell"}
    assert -1.0 <= body["target_position"] <= 1.0
    assert pd.Timestamp(body["timestamp"]) == pd.Timestamp(payload["bars"][-1]["timestamp"])
    assert body["model_versions"] == {"forecaster": "1", "ppo": "1", "sac": "1", "td3": "1"}
    # the served forecast is the registered bundle's forecast on the same bars
    bundle, _, _ = tracking.load_model_dir("raytrade-forecaster", "champion", smoke["report"]["mlflow"]["tracking_uri"])
    frame = pd.DataFrame(payload["bars"]).assign(symbol="BTC/USD")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    direct = bundle.forecast_bars(frame)
    for k in ("sell", "hold", "buy"):
        assert body["forecast"]["probs"][k] == pytest.approx(direct["probs"][k], abs=1e-5)
    # the served agent position is the registered policy acting on the env's observation layout
    # (forecaster outputs incl. the embedding and seeded MC-dropout uncertainty, as raytrade.rl.inputs builds them)
    from raytrade.rl.inputs import agent_outputs, forecast_inputs

    windows = bundle.window_from_bars(frame)
    for agent in ("ppo", "sac", "td3"):
        policy, _, _ = tracking.load_model_dir(f"raytrade-agent-{agent}", "champion",
                                               smoke["report"]["mlflow"]["tracking_uri"])
        assert policy.forecast_inputs == list(smoke["cfg"].rl.forecast_inputs)
        outputs = agent_outputs(bundle, windows, policy.forecast_inputs)
        row = forecast_inputs(outputs, bundle.model_kwargs["return_scale"], policy.forecast_inputs)[0]
        obs = policy.observation(windows[0], list(bundle.scaler.columns), row, 0.25)
        assert obs.shape == (policy.obs_dim,) and policy.feature_names == list(smoke["cfg"].rl.features)
        assert body["agents"][agent] == pytest.approx(float(policy.act(obs)[0]), abs=1e-4), agent
    weights = smoke["report"]["backtest"]["serve_weights"]
    expected = combine_positions({"forecaster": direct["probs"]["buy"] - direct["probs"]["sell"],
                                  **{a: body["agents"][a] for a in ("ppo", "sac", "td3")}}, weights,
                                 smoke["cfg"].backtest.max_position)
    assert body["target_position"] == pytest.approx(float(expected), abs=1e-5)
    delta = body["target_position"] - 0.25
    assert body["signal"] == ("buy" if delta > 0.05 else "sell" if delta < -0.05 else "hold")


def _detail(resp: httpx.Response) -> str:
    assert resp.status_code == 422, resp.text
    return json.dumps(resp.json()["detail"])


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.update(bars=[]), "bars"),
        (lambda p: p.update(bars="recent"), "bars"),
        (lambda p: p.pop("symbol"), "symbol"),
        (lambda p: p.update(position=1.5), "position"),
        (lambda p: p.update(position="long"), "position"),
        (lambda p: p["bars"][3].pop("close"), "close"),
        (lambda p: p["bars"][3].update(volume=-1), "volume"),
        (lambda p: p["bars"][3].update(timestamp="yesterday"), "timestamp"),
        (lambda p: p.update(bars=p["bars"][:10]), "bars"),
        (lambda p: p.update(extra=1), "extra"),
    ],
)
def test_malformed_requests_get_422_naming_the_field(smoke, mutate, field):
    payload = _payload()
    mutate(payload)
    assert field in _detail(smoke["client"].post("/predict", json=payload))


def test_bad_bars_get_422_naming_the_rule(smoke):
    c = smoke["client"]
    payload = _payload()
    payload["bars"][50]["high"] = payload["bars"][50]["low"] * 0.5
    detail = _detail(c.post("/predict", json=payload))
    assert "ohlc_relation" in detail and payload["bars"][50]["timestamp"][:10] in detail
    assert c.get("/models").json()["forecaster"]["min_bars"] == 295
    payload = _payload()
    payload["bars"][60], payload["bars"][61] = payload["bars"][61], payload["bars"][60]
    assert "unsorted_timestamps" in _detail(c.post("/predict", json=payload))
    resp = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_serve_config_is_a_valid_serve_deploy_file():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve_configs" / "ensemble.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "raytrade.serving.app:build_app"
    assert {d.name for d in app.deployments} == {"Ingress", "Forecaster", "Agent-ppo", "Agent-sac", "Agent-td3"}
    for d in raw["applications"][0]["deployments"]:
        assert d["autoscaling_config"]["max_replicas"] >= d["autoscaling_config"]["min_replicas"] >= 1


def test_online_store_windows_serve_predictions_without_bars(smoke):
    from raytrade.store import OnlineFeatureStore

    report = smoke["report"]
    store_info = report["store"]
    store = OnlineFeatureStore(store_info["url"], feature_set_version=store_info["version"], prefix="e2e")
    latest = store.read_latest("BTC/USD")
    bars = load_bars(BUNDLED)
    assert latest.features["timestamp"].iloc[-1] == bars["timestamp"].iloc[-1]
    assert len(latest.features) == smoke["cfg"].model.lookback
    assert 0 < store.ttl("BTC/USD") <= smoke["cfg"].store.ttl_s
    c = smoke["client"]
    assert c.get("/models").json()["forecaster"]["feature_set_version"] == store_info["version"]
    stored = c.post("/predict", json={"symbol": "BTC/USD", "position": 0.0})
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert pd.Timestamp(body["timestamp"]) == bars["timestamp"].iloc[-1]
    # the same last bars sent in the request give (nearly) the same forecast: same features, same scaler;
    # only the EMA seeds differ (full history vs the request's bars)
    direct = c.post("/predict", json=request_payload(bars, bars["timestamp"].iloc[-1], 600, 0.0)).json()
    for k in ("sell", "hold", "buy"):
        assert body["forecast"]["probs"][k] == pytest.approx(direct["forecast"]["probs"][k], abs=1e-3)
    missing = c.post("/predict", json={"symbol": "ETH/USD"})
    assert "ETH/USD" in _detail(missing)


def test_unreachable_redis_gives_clear_503_and_request_bars_still_work(smoke):
    from ray import serve

    from raytrade.serving.app import app_from_config

    dead = f"redis://127.0.0.1:{free_port()}/0"
    report = smoke["report"]
    app, _ = app_from_config(REPO / "serve_configs" / "ensemble.yaml", {
        "tracking_uri": report["mlflow"]["tracking_uri"], "redis_url": dead,
        "agent_models": {"ppo": report["mlflow"]["agent_models"]["ppo"]}, "ensemble_weights": {}})
    serve.run(app, name="noredis", route_prefix="/noredis")
    try:
        c = smoke["client"]
        resp = c.post("/noredis/predict", json={"symbol": "BTC/USD"})
        assert resp.status_code == 503
        assert dead in resp.text and "unreachable" in resp.text
        ok = c.post("/noredis/predict", json=_payload())
        assert ok.status_code == 200, ok.text
    finally:
        serve.delete("noredis")
