"""Ray Serve ensemble app, over real HTTP, serving the models the smoke pipeline registered.

The composed app is deployed from serve_configs/ensemble.composed.yaml the way ``serve deploy`` does it (Ray's REST
API), with the args pointed at the pipeline's temporary MLflow registry and the session's real Redis-protocol server,
an A/B challenger arm, and reload_interval_s 1 so alias moves are seen quickly. Config changes are redeployed the
same way, so user_config changes are the lightweight (no restart) updates users get.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings

from conftest import BUNDLED, REPO, free_port, metrics_port
from raytrade.data import load_bars
from raytrade.pipeline import request_payload

CONFIG = REPO / "serve_configs" / "ensemble.composed.yaml"
RESPONSE_KEYS = {"symbol", "timestamp", "signal", "target_position", "confidence", "forecast", "agents",
                 "model_versions", "forecaster_variant", "weights", "drawdown_cut", "cached"}
PORT = free_port()
ACCOUNT_KEYS = ("position", "unrealised_pnl", "drawdown")  # what an agent observes of its book, as the env's info


def _config(report: dict, edit=None) -> dict:  # noqa: ANN001
    """serve_configs/ensemble.composed.yaml pointed at the smoke run's registry and Redis, with an A/B challenger arm
    (alias ``challenger``), 1 s alias polling and the Sharpe vote's weights, then ``edit(app, deployments)``."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["http_options"]["port"] = PORT
    app = raw["applications"][0]
    app["args"].update(tracking_uri=report["mlflow"]["tracking_uri"], agent_models=report["mlflow"]["agent_models"],
                       redis_url=report["store"]["url"], store_prefix="e2e", challenger_model="raytrade-forecaster")
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["Forecaster-challenger"] = {**deployments["Forecaster"], "name": "Forecaster-challenger"}
    for name, d in deployments.items():
        if name.startswith("Forecaster") or name.startswith("Agent-"):
            d["user_config"] = {**d.get("user_config", {}), "reload_interval_s": 1}
    deployments["Combiner"]["user_config"]["weights"] = report["backtest"]["serve_weights"]
    if edit is not None:
        edit(app, deployments)
    app["deployments"] = list(deployments.values())
    return raw


def _deploy(config: dict, ready, timeout_s: float = 180) -> None:  # noqa: ANN001
    """``serve deploy`` of ``config`` through Ray's REST API, then wait until ``ready()``."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    ServeSubmissionClient(os.environ["RAYTRADE_TEST_DASHBOARD"]).deploy_applications(config)
    _deploy_wait(ready, timeout_s)


def _deploy_wait(ready, timeout_s: float = 180) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"deployment not ready after {timeout_s} s")


def _models() -> dict:
    resp = httpx.get(f"http://127.0.0.1:{PORT}/models", timeout=30)
    resp.raise_for_status()
    return resp.json()


def _running() -> bool:
    from ray import serve

    from raytrade.serving.app import APP_NAME

    return serve.status().applications[APP_NAME].status == "RUNNING"


@pytest.fixture(scope="module")
def served(smoke_run):
    from ray import serve

    from raytrade import tracking

    # the A/B arm: the same registered forecaster under alias "challenger" (moved to version 2 by a test)
    tracking.set_alias(smoke_run["report"]["mlflow"]["tracking_uri"], "raytrade-forecaster", "challenger", "1")
    config = _config(smoke_run["report"])
    _deploy(config, _running)
    client = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60)
    yield {**smoke_run, "client": client, "config": config}
    client.close()
    serve.shutdown()


@pytest.fixture(scope="module")
def forecaster_v2(served):
    """A second registered version of the forecaster (the same bundle, registered again), alias untouched."""
    from raytrade import tracking
    from raytrade.stages.common import FORECASTER_LOADER

    uri = served["report"]["mlflow"]["tracking_uri"]
    with tracking.start_run(uri, served["cfg"].tracking.experiment, "forecaster-v2"):
        version = tracking.log_model_dir(served["run_dir"] / "forecaster", FORECASTER_LOADER, "raytrade-forecaster",
                                         None)
    assert version == "2"
    return version


def _payload(n_bars: int = 360, position: float = 0.0, end: int = -1) -> dict:
    """``n_bars`` real bars ending at bar ``end`` of the first 600 (warm-up 263 + lookback 32 = 295 needed)."""
    bars = load_bars(BUNDLED, max_bars=600)
    return request_payload(bars, bars["timestamp"].iloc[end], n_bars, position)


def _detail(resp: httpx.Response, status: int = 422) -> str:
    assert resp.status_code == status, resp.text
    return json.dumps(resp.json()["detail"])


def test_health_and_models(served):
    c = served["client"]
    assert c.get("/health").json() == {"status": "ok"}
    models = c.get("/models").json()
    f = models["forecaster"]
    assert (f["name"], f["alias"], f["version"]) == ("raytrade-forecaster", "champion", "1")
    assert f["run_id"] == served["report"]["mlflow_run_ids"]["forecaster"]
    assert pd.Timestamp(f["loaded_at"]) <= pd.Timestamp.now(tz="UTC")
    assert {a: m["version"] for a, m in models["agents"].items()} == {"ppo": "1", "sac": "1", "td3": "1"}
    assert all(m["alias"] == "champion" and m["loaded_at"] for m in models["agents"].values())
    challenger = models["challenger"]
    assert (challenger["name"], challenger["alias"]) == ("raytrade-forecaster", "challenger")
    assert challenger["version"] == "1"
    assert models["ab"]["challenger_share"] == 0.0
    weights = served["report"]["backtest"]["serve_weights"]
    assert models["ensemble"]["weights"] == pytest.approx(weights)
    assert models["prediction_cache"]["enabled"] is True


def test_predict_contract_and_same_features_as_training(served):
    from raytrade import tracking
    from raytrade.rl.ensemble import combine_positions
    from raytrade.rl.inputs import agent_outputs, forecast_inputs

    payload = _payload(position=0.25)
    resp = served["client"].post("/predict", json=payload)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == RESPONSE_KEYS
    assert body["symbol"] == "BTC/USD" and body["signal"] in {"buy", "hold", "sell"}
    assert -1.0 <= body["target_position"] <= 1.0 and body["forecaster_variant"] == "champion"
    assert pd.Timestamp(body["timestamp"]) == pd.Timestamp(payload["bars"][-1]["timestamp"])
    assert body["model_versions"] == {"forecaster": "1", "ppo": "1", "sac": "1", "td3": "1"}
    uri = served["report"]["mlflow"]["tracking_uri"]
    # the served forecast is the registered bundle's forecast on the same bars, with MC-dropout uncertainty
    bundle, _, _ = tracking.load_model_dir("raytrade-forecaster", "champion", uri)
    frame = pd.DataFrame(payload["bars"]).assign(symbol="BTC/USD")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    direct = bundle.forecast_bars(frame)
    for k in ("sell", "hold", "buy"):
        assert body["forecast"]["probs"][k] == pytest.approx(direct["probs"][k], abs=1e-5)
    windows = bundle.window_from_bars(frame)
    mc = agent_outputs(bundle, windows, ("probs", "uncertainty"))
    assert body["forecast"]["uncertainty"]["return_std"] == pytest.approx(float(mc["return_std"][0]), rel=1e-4)
    assert body["forecast"]["uncertainty"]["mutual_information"] >= 0
    # each served agent position is the registered policy acting on the env's observation layout, with the account
    # state it is given: the legacy `position` (flat P&L and drawdown), or `account` for every agent and
    # `agent_accounts` for one (each agent trades its own book in the backtest)
    account = {"position": -0.4, "unrealised_pnl": -0.03, "drawdown": 0.07}
    own = {"position": 0.6, "unrealised_pnl": 0.05, "drawdown": 0.02}
    legacy = {k: v for k, v in payload.items() if k != "position"}
    accounts = served["client"].post("/predict", json={**legacy, "account": account, "agent_accounts": {"ppo": own}})
    assert accounts.status_code == 200, accounts.text
    for agent in ("ppo", "sac", "td3"):
        policy, _, _ = tracking.load_model_dir(f"raytrade-agent-{agent}", "champion", uri)
        outputs = agent_outputs(bundle, windows, policy.forecast_inputs)
        row = forecast_inputs(outputs, bundle.model_kwargs["return_scale"], policy.forecast_inputs)[0]
        obs = policy.observation(windows[0], list(bundle.scaler.columns), row, 0.25)
        assert obs.shape == (policy.obs_dim,)
        assert body["agents"][agent] == pytest.approx(float(policy.act(obs)[0]), abs=1e-4), agent
        state = own if agent == "ppo" else account
        obs = policy.observation(windows[0], list(bundle.scaler.columns), row, *(state[k] for k in ACCOUNT_KEYS))
        assert accounts.json()["agents"][agent] == pytest.approx(float(policy.act(obs)[0]), abs=1e-4), agent
    weights = served["report"]["backtest"]["serve_weights"]
    expected = combine_positions({"forecaster": direct["probs"]["buy"] - direct["probs"]["sell"],
                                  **{a: body["agents"][a] for a in ("ppo", "sac", "td3")}}, weights,
                                 served["cfg"].backtest.max_position)
    assert body["target_position"] == pytest.approx(float(expected), abs=1e-5)
    delta = body["target_position"] - 0.25
    assert body["signal"] == ("buy" if delta > 0.05 else "sell" if delta < -0.05 else "hold")


def test_drawdown_beyond_the_limit_cuts_the_target(served):
    c = served["client"]
    payload = {k: v for k, v in _payload(end=-3).items() if k != "position"}
    fresh = {name: {} for name in ("ppo", "sac", "td3")}  # the agents' own books: they vote the same both times
    calm = c.post("/predict", json={**payload, "account": {"drawdown": 0.0}, "agent_accounts": fresh}).json()
    deep = c.post("/predict", json={**payload, "account": {"drawdown": 0.5}, "agent_accounts": fresh}).json()
    assert calm["drawdown_cut"] is False and deep["drawdown_cut"] is True and deep["agents"] == calm["agents"]
    assert deep["target_position"] == pytest.approx(calm["target_position"] * served["cfg"].ensemble.drawdown_cut)
    legacy = c.post("/predict", json={**payload, "drawdown": 0.5}).json()  # the account every agent observes too
    assert legacy["drawdown_cut"] is True


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.update(bars=[]), "bars"),
        (lambda p: p.update(bars="recent"), "bars"),
        (lambda p: p.pop("symbol"), "symbol"),
        (lambda p: p.update(position=2.5), "position"),
        (lambda p: p.update(position="long"), "position"),
        (lambda p: p.update(drawdown=-0.1), "drawdown"),
        (lambda p: p.update(account={"position": 0.1}), "account"),  # and the legacy `position`
        (lambda p: (p.pop("position"), p.update(account={"unrealised_pnl": -1.5})), "unrealised_pnl"),
        (lambda p: (p.pop("position"), p.update(account={"drawdown": 1.5})), "drawdown"),
        (lambda p: (p.pop("position"), p.update(account={"pnl": 0.1})), "pnl"),
        (lambda p: p.update(agent_accounts={"ppo": {"position": -3.0}}), "ppo"),
        (lambda p: p.update(agent_accounts={"dqn": {"position": 0.1}}), "dqn"),
        (lambda p: p["bars"][3].pop("close"), "close"),
        (lambda p: p["bars"][3].update(volume=-1), "volume"),
        (lambda p: p["bars"][3].update(open=0.0), "open"),
        (lambda p: p["bars"][3].update(timestamp="yesterday"), "timestamp"),
        (lambda p: p["bars"][-1].update(timestamp="2263-01-01T00:00:00Z"), "timestamp"),  # found by the fuzz test
        (lambda p: p.update(bars=p["bars"][:10]), "bars"),
        (lambda p: p.update(extra=1), "extra"),
        (lambda p: p["bars"][3].update(extra=1), "extra"),
    ],
)
def test_malformed_requests_get_422_naming_the_field(served, mutate, field):
    payload = _payload()
    mutate(payload)
    assert field in _detail(served["client"].post("/predict", json=payload))


def test_bad_bars_get_422_naming_the_rule(served):
    c = served["client"]
    payload = _payload()
    payload["bars"][50]["high"] = payload["bars"][50]["low"] * 0.5
    detail = _detail(c.post("/predict", json=payload))
    assert "ohlc_relation" in detail and payload["bars"][50]["timestamp"][:10] in detail
    payload = _payload()
    payload["bars"][60], payload["bars"][61] = payload["bars"][61], payload["bars"][60]
    assert "unsorted_timestamps" in _detail(c.post("/predict", json=payload))
    payload = _payload()
    payload["bars"][70]["timestamp"] = payload["bars"][69]["timestamp"]
    assert "duplicate" in _detail(c.post("/predict", json=payload))
    for literal in ("NaN", "Infinity"):  # JSON extensions Python's parser accepts: still rejected by the schema
        body = json.dumps(_payload()).replace('"close": ', f'"close": {literal}, "x_": ', 1)
        resp = c.post("/predict", content=body.encode(), headers={"content-type": "application/json"})
        assert resp.status_code == 422 and "close" in resp.text, resp.text
    resp = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_batch_predicts_in_order_and_names_the_bad_item(served):
    c = served["client"]
    requests = [_payload(end=-1), {"symbol": "BTC/USD"}, _payload(end=-5, position=0.5)]
    resp = c.post("/predict/batch", json={"requests": requests})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 3 and all(set(p) == RESPONSE_KEYS for p in preds)
    assert pd.Timestamp(preds[2]["timestamp"]) == pd.Timestamp(requests[2]["bars"][-1]["timestamp"])
    single = c.post("/predict", json=requests[2]).json()
    assert preds[2]["target_position"] == pytest.approx(single["target_position"])
    bad = _payload()
    bad["bars"][40]["low"] = bad["bars"][40]["high"] * 2
    detail = json.loads(_detail(c.post("/predict/batch", json={"requests": [requests[0], bad]})))
    assert detail[0]["loc"][:4] == ["body", "requests", 1, "bars"] and detail[0]["type"] == "ohlc_relation"
    unknown = {**requests[2], "agent_accounts": {"ppo": {"position": 0.1}, "a2c": {"position": 0.1}}}
    detail = json.loads(_detail(c.post("/predict/batch", json={"requests": [requests[0], unknown]})))
    assert detail == [{"loc": ["body", "requests", 1, "agent_accounts", "a2c"], "type": "unknown_agent",
                       "msg": "unknown agent 'a2c'; this app serves ['ppo', 'sac', 'td3']"}]
    assert "requests" in _detail(c.post("/predict/batch", json={"requests": []}))


def test_repeated_request_is_answered_from_the_prediction_cache(served):
    c = served["client"]
    payload = _payload(end=-7, position=0.1)
    first, second = (c.post("/predict", json=payload).json() for _ in range(2))
    assert second["cached"] is True
    assert {k: v for k, v in second.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    assert c.post("/predict", json={**payload, "position": -0.1}).json()["cached"] is False


def test_combiner_user_config_applies_without_restarting_replicas(served, tmp_path):
    c = served["client"]
    before = c.get("/models").json()

    def forecaster_only(app: dict, deployments: dict) -> None:
        deployments["Combiner"]["user_config"]["weights"] = {"forecaster": 1.0}

    path = tmp_path / "serve.yaml"  # through the CLI, as a user edits the file and redeploys it
    path.write_text(yaml.safe_dump(_config(served["report"], forecaster_only)))
    result = subprocess.run([str(Path(sys.executable).parent / "raytrade"), "serve", "--deploy", "--config", str(path),
                             "--address", os.environ["RAYTRADE_TEST_DASHBOARD"]], capture_output=True, text=True)
    assert result.returncode == 0 and "deployed raytrade" in result.stdout, result.stderr
    _deploy_wait(lambda: _models()["ensemble"]["weights"] == {"forecaster": 1.0})
    try:
        after = c.get("/models").json()
        assert after["ensemble"]["replica"] == before["ensemble"]["replica"]  # reconfigured, not restarted
        assert after["ensemble"]["configured_at"] > before["ensemble"]["configured_at"]
        assert after["forecaster"]["loaded_at"] == before["forecaster"]["loaded_at"]
        body = c.post("/predict", json=_payload(end=-9)).json()
        signal = body["forecast"]["probs"]["buy"] - body["forecast"]["probs"]["sell"]
        assert body["weights"]["forecaster"] == 1.0 and body["target_position"] == pytest.approx(signal)
    finally:
        _deploy(served["config"], lambda: _models()["ensemble"]["weights"] != {"forecaster": 1.0})
    assert c.get("/models").json()["ensemble"]["weights"] == pytest.approx(before["ensemble"]["weights"])


def test_alias_move_hot_reloads_without_dropping_requests(served, forecaster_v2):
    from raytrade import tracking

    c = served["client"]
    uri = served["report"]["mlflow"]["tracking_uri"]
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=c.base_url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                resp = client.post("/predict", json=_payload(end=-1 - i % 50, position=0.01 * (i % 7)))
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    versions.append(resp.json()["model_versions"]["forecaster"])
                i += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1.0)
        tracking.set_alias(uri, "raytrade-forecaster", "champion", forecaster_v2)
        deadline = time.monotonic() + 60
        while "2" not in versions[-3:] and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
        tracking.set_alias(uri, "raytrade-forecaster", "champion", "1")
    assert versions[0] == "1" and versions[-1] == "2", versions
    assert set(statuses) == {200}, statuses
    models = c.get("/models").json()["forecaster"]
    assert models["version"] == "2" and models["alias"] == "champion"
    deadline = time.monotonic() + 60
    i = 0
    while c.get("/models").json()["forecaster"]["version"] != "1" and time.monotonic() < deadline:
        c.post("/predict", json=_payload(position=0.001 * i))  # replicas check the alias on requests
        i += 1
        time.sleep(0.5)
    assert c.get("/models").json()["forecaster"]["version"] == "1"


def test_ab_split_routes_by_weight_and_names_the_version(served, forecaster_v2):
    from raytrade import tracking

    c = served["client"]
    uri = served["report"]["mlflow"]["tracking_uri"]
    tracking.set_alias(uri, "raytrade-forecaster", "challenger", forecaster_v2)

    def ab(app: dict, deployments: dict) -> None:
        deployments["Ingress"]["user_config"] = {**deployments["Ingress"]["user_config"], "challenger_share": 0.5}

    _deploy(_config(served["report"], ab), lambda: _models()["ab"]["challenger_share"] == 0.5)
    try:
        deadline = time.monotonic() + 60  # the challenger replica re-reads its alias within 1 s of a request
        i = 0
        while c.get("/models").json()["challenger"]["version"] != forecaster_v2 and time.monotonic() < deadline:
            c.post("/predict", json=_payload(end=-30 - i % 20, position=0.002 * i))
            i += 1
            time.sleep(0.2)
        arms: dict[str, set] = {}
        for i in range(24):
            body = c.post("/predict", json=_payload(end=-1 - i)).json()
            arms.setdefault(body["forecaster_variant"], set()).add(body["model_versions"]["forecaster"])
        assert arms == {"champion": {"1"}, "challenger": {forecaster_v2}}
        first, again = (c.post("/predict", json=_payload(end=-4)).json() for _ in range(2))
        assert again["forecaster_variant"] == first["forecaster_variant"]  # sticky per (symbol, last bar)
    finally:
        _deploy(served["config"], lambda: _models()["ab"]["challenger_share"] == 0.0)


def _scrape() -> str:
    return httpx.get(f"http://127.0.0.1:{metrics_port()}/metrics", timeout=10).text


def test_custom_metrics_on_rays_prometheus_endpoint(served):
    c = served["client"]
    payload = _payload(end=-11)
    for _ in range(2):
        assert c.post("/predict", json=payload).status_code == 200
    assert c.post("/predict", json={"symbol": "BTC/USD", "bars": []}).status_code == 422
    wanted = [
        r'ray_raytrade_requests_total\{[^}]*outcome="ok"[^}]*route="/predict"',
        r'ray_raytrade_requests_total\{[^}]*outcome="invalid"[^}]*route="/predict"',
        r'ray_raytrade_request_latency_ms_bucket\{[^}]*route="/predict"',
        r'ray_raytrade_model_latency_ms_bucket\{[^}]*model="forecaster"',
        r'ray_raytrade_model_latency_ms_bucket\{[^}]*model="ppo"',
        r'ray_raytrade_batch_size_bucket\{[^}]*model="forecaster"',
        r'ray_raytrade_cache_total\{[^}]*result="hit"',
    ]
    deadline = time.monotonic() + 60
    text = _scrape()
    while any(re.search(w, text) is None for w in wanted) and time.monotonic() < deadline:
        time.sleep(2)
        text = _scrape()
    missing = [w for w in wanted if re.search(w, text) is None]
    assert not missing, missing


def test_killed_forecaster_replica_loses_only_in_flight_requests_and_comes_back(served):
    import ray
    from ray import serve

    from raytrade.serving.app import APP_NAME

    def replicas() -> set[str]:  # Serve names replica actors SERVE_REPLICA::<app>#<deployment>#<id>
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#Forecaster#")}

    (victim,) = replicas()
    clients, statuses, stop = 8, [], threading.Event()
    c = served["client"]

    def load(k: int) -> None:
        with httpx.Client(base_url=c.base_url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                resp = client.post("/predict", json=_payload(end=-1 - (k * 13 + i) % 200, position=0.001 * i))
                statuses.append(resp.status_code)
                i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = serve.status().applications[APP_NAME].deployments["Forecaster"].status
            if replicas() - {victim} and status == "HEALTHY":
                break
            time.sleep(1.0)
        n_after = len(statuses)
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [s for s in statuses if s != 200]
    assert set(failed) <= {503}, failed  # a lost replica is "retry", never a 500
    assert len(failed) <= clients  # at most the requests in flight (one per closed-loop client)
    assert statuses[n_after:] and set(statuses[n_after:]) == {200}
    assert replicas() - {victim}


def test_unreachable_redis_gives_clear_503_and_request_bars_still_work(served):
    import copy

    from ray import serve

    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = copy.deepcopy(served["config"])
    noredis = copy.deepcopy(config["applications"][0])
    noredis.update(name="noredis", route_prefix="/noredis")
    noredis["args"].update(redis_url=dead, challenger_model=None, agent_models={"ppo": "raytrade-agent-ppo"})
    noredis["deployments"] = [d for d in noredis["deployments"]
                              if d["name"] not in ("Forecaster-challenger", "Agent-sac", "Agent-td3")]
    config["applications"].append(noredis)
    _deploy(config, lambda: serve.status().applications["noredis"].status == "RUNNING")
    try:
        c = served["client"]
        resp = c.post("/noredis/predict", json={"symbol": "BTC/USD"})
        assert resp.status_code == 503
        assert dead in resp.text and "unreachable" in resp.text
        ok = c.post("/noredis/predict", json=_payload())
        assert ok.status_code == 200, ok.text
        assert ok.json()["cached"] is False
    finally:
        _deploy(served["config"], lambda: "noredis" not in serve.status().applications)


def test_online_store_windows_serve_predictions_without_bars(served):
    from raytrade.store import OnlineFeatureStore

    report = served["report"]
    store_info = report["store"]
    store = OnlineFeatureStore(store_info["url"], feature_set_version=store_info["version"], prefix="e2e")
    latest = store.read_latest("BTC/USD")
    bars = load_bars(BUNDLED)
    assert latest.features["timestamp"].iloc[-1] == bars["timestamp"].iloc[-1]
    assert len(latest.features) == served["cfg"].model.lookback
    c = served["client"]
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


@pytest.mark.parametrize("name", ["ensemble.composed.yaml", "ensemble.gpu.yaml"])
def test_serve_configs_are_valid_serve_deploy_files(name):
    from ray.serve.schema import ServeDeploySchema

    from raytrade.serving.ingress import IngressConfig
    from raytrade.serving.slots import ModelSlotConfig
    from raytrade.serving.steps import CombinerConfig

    raw = yaml.safe_load((REPO / "serve_configs" / name).read_text())
    app = ServeDeploySchema.parse_obj(raw).applications[0]
    assert app.import_path == "raytrade.serving.app:build_app"
    deployments = {d["name"]: d for d in raw["applications"][0]["deployments"]}
    assert set(deployments) == {"Ingress", "Features", "Forecaster", "Agent-ppo", "Agent-sac", "Agent-td3",
                                "Combiner"}
    for d in deployments.values():
        assert d["autoscaling_config"]["max_replicas"] >= d["autoscaling_config"]["min_replicas"] >= 1
        assert d["max_ongoing_requests"] >= d["autoscaling_config"]["target_ongoing_requests"]
    CombinerConfig.model_validate(deployments["Combiner"]["user_config"])
    IngressConfig.model_validate(deployments["Ingress"]["user_config"])
    ModelSlotConfig.model_validate(deployments["Forecaster"]["user_config"])
    gpus = deployments["Forecaster"]["ray_actor_options"].get("num_gpus", 0)
    assert gpus == (1 if name == "ensemble.gpu.yaml" else 0)
    assert np.isfinite(float(deployments["Combiner"]["user_config"]["max_drawdown"]))


def test_the_cluster_serve_config_spreads_two_replicas_over_nodes_and_gives_mlflow_one_try():
    """serve_configs/ensemble.cluster.yaml (tests/test_local_cluster.py deploys it on two nodes): a valid `serve
    deploy` file of the one-hop app, one replica per node, the same combiner as ensemble.yaml."""
    from ray.serve.schema import ServeDeploySchema

    from raytrade.serving.decision import DecisionConfig

    raw = yaml.safe_load((REPO / "serve_configs" / "ensemble.cluster.yaml").read_text())
    app = ServeDeploySchema.parse_obj(raw).applications[0]
    assert app.import_path == "raytrade.serving.app:build_decision_app"
    (decision,) = raw["applications"][0]["deployments"]
    assert decision["num_replicas"] == 2 and decision["max_replicas_per_node"] == 1
    DecisionConfig.model_validate(decision["user_config"])
    env = decision["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    single = yaml.safe_load((REPO / "serve_configs" / "ensemble.yaml").read_text())["applications"][0]
    assert decision["user_config"]["combiner"] == single["deployments"][0]["user_config"]["combiner"]
    assert raw["applications"][0]["args"] == single["args"]


def _replay(env, act) -> dict[int, dict[str, float]]:  # noqa: ANN001
    """One deterministic episode of ``env`` from ``reset(seed=0)``, as :meth:`raytrade.rl.policy.Policy.evaluate`
    runs it; ``act(obs, t, account)`` gives each step's action. Per bar ``t`` (``info["t"]`` before the step): the
    account state the observation showed (``info`` before the step: position held, unrealised P&L, drawdown) and
    the ``target`` the step mapped the action to (``info["target"]``; before the env reported it, the position
    right after the step, which was the target)."""
    obs, info = env.reset(seed=0)
    rows: dict[int, dict[str, float]] = {}
    done = False
    while not done:
        t, account = int(info["t"]), {k: float(info[k]) for k in ACCOUNT_KEYS}
        obs, _, terminated, truncated, info = env.step(np.atleast_1d(act(obs, t, account)).astype(np.float32))
        rows[t] = {**account, "target": float(info.get("target", info["position"]))}
        done = terminated or truncated
    return rows


def test_served_app_replays_the_backtests_test_episode_bar_by_bar(served):
    """Offline/online parity over the whole TEST-split episode, mid-position and in drawdown.

    In the backtest each agent trades its own book (one env over the test split, :meth:`Policy.evaluate`). At every
    bar the request carries, per agent (``agent_accounts``), the account state its env showed before that step, and
    as ``account`` the book of the ensemble that trades the served rule (served weights, then the backtest's risk
    layer at its own drawdown) in an env with the same accounting. Each agent's served action must be the target
    its env step took, and the served ensemble target the risk layer's on the members' targets at that drawdown.

    A bar's features reach the app through the online store: the unscaled rows the pipeline computed over the whole
    history (what the backtest's windows hold) are written as the latest window of symbol ``BTC/USD#<bar>``, so
    the whole episode goes in a few ``/predict/batch`` calls (a request's own bars would restart the indicators'
    EMAs). Two bars also go through the request-bars path with the whole history before them, as a client sends it.
    """
    from raytrade import tracking
    from raytrade.dataset.prepare import load_market_data, prepare_data
    from raytrade.models.bundle import signal_positions
    from raytrade.rl.ensemble import combine_positions, risk_limited_position
    from raytrade.rl.env_inputs import agent_data, bundle_windows, env_kwargs
    from raytrade.runtime import ensure_ray
    from raytrade.store import OnlineFeatureStore
    from raytrade_envs import TradingEnv

    cfg, report, c = served["cfg"], served["report"], served["client"]
    uri = report["mlflow"]["tracking_uri"]
    ensure_ray(cfg)
    bundle, _, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias, uri)
    policies = {a: tracking.load_model_dir(m, cfg.tracking.alias, uri)[0]
                for a, m in report["mlflow"]["agent_models"].items()}
    market = load_market_data(cfg)
    prepared = prepare_data(cfg, market)
    data = agent_data(cfg, prepared, market.bars, bundle, bundle_windows(prepared, bundle))
    test, stamps = data.arrays["test"], pd.to_datetime(data.timestamps["test"], utc=True)
    combiner = c.get("/models").json()["ensemble"]  # the weights and risk limits in force
    limits = {k: combiner[k] for k in ("max_position", "max_drawdown", "drawdown_cut")}

    # the backtest: each agent's own episode, then the ensemble's over the members' targets
    agents = {name: _replay(TradingEnv(**env_kwargs(cfg, test, train=False)), lambda obs, t, a, p=p: p.act(obs)[0])
              for name, p in policies.items()}
    bars = sorted(next(iter(agents.values())))
    assert all(sorted(rows) == bars for rows in agents.values()) and len(bars) > 100
    signal = signal_positions(data.forecasts["test"]["probs"], limits["max_position"])
    expected: dict[int, tuple[float, bool]] = {}

    def ensemble_act(obs, t, account):  # noqa: ANN001, ANN202
        members = {"forecaster": float(signal[t]), **{name: rows[t]["target"] for name, rows in agents.items()}}
        raw = float(combine_positions(members, combiner["weights"], limits["max_position"]))
        expected[t] = risk_limited_position(raw, account["drawdown"], **limits)
        return expected[t][0] / cfg.backtest.max_position

    ensemble = _replay(TradingEnv(**env_kwargs(cfg, test, train=False)), ensemble_act)
    for name, rows in {**agents, "ensemble": ensemble}.items():  # the episode leaves the flat, fresh book
        for key in ACCOUNT_KEYS:
            assert any(abs(r[key]) > 1e-6 for r in rows.values()), (name, key)

    # the same bars through the served app: each bar's feature window from the online store
    part = prepared.split.test.reset_index(drop=True)
    lookback, columns = bundle.lookback, ["timestamp", *bundle.scaler.columns]
    symbol = str(market.bars["symbol"].iloc[-1])
    store = OnlineFeatureStore(report["store"]["url"], feature_set_version=bundle.feature_set_version, prefix="e2e")
    windows = {}
    for t in bars:
        rows = part.iloc[t : t + lookback]
        assert pd.Timestamp(rows["timestamp"].iloc[-1]) == stamps[t]
        last = market.bars[market.bars["timestamp"] <= stamps[t]].tail(1).assign(symbol=f"{symbol}#{t}")
        windows[f"{symbol}#{t}"] = (rows[columns], last)
    store.write_many(windows)

    def request(t: int, **extra: object) -> dict:
        return {"symbol": f"{symbol}#{t}", "account": {k: ensemble[t][k] for k in ACCOUNT_KEYS},
                "agent_accounts": {n: {k: rows[t][k] for k in ACCOUNT_KEYS} for n, rows in agents.items()}, **extra}

    def predict(reqs: list[dict]) -> list[dict]:
        out = []
        for i in range(0, len(reqs), 256):
            resp = c.post("/predict/batch", json={"requests": reqs[i : i + 256]})
            assert resp.status_code == 200, resp.text[:2000]
            out += resp.json()["predictions"]
        return out

    try:
        answers = dict(zip(bars, predict([request(t) for t in bars]), strict=True))
        # with the agents' P&L and drawdown zeroed (what Serve used to observe), some bar is decided differently
        deep = sorted(bars, key=lambda t: -sum(abs(r[t]["unrealised_pnl"]) + r[t]["drawdown"]
                                               for r in agents.values()))[:32]
        zeroed = predict([{**request(t), "agent_accounts": {n: {"position": rows[t]["position"]}
                                                            for n, rows in agents.items()}} for t in deep])
    finally:
        for name in windows:
            store.delete(name)
    for t, body in answers.items():
        assert pd.Timestamp(body["timestamp"]) == stamps[t]
        probs = data.forecasts["test"]["probs"][t]
        assert [body["forecast"]["probs"][k] for k in ("sell", "hold", "buy")] == pytest.approx(probs, abs=1e-5)
        for name, rows in agents.items():
            served_target = body["agents"][name] * cfg.backtest.max_position  # the env's action mapping
            assert served_target == pytest.approx(rows[t]["target"], abs=1e-4), (t, name, rows[t])
        target, cut = expected[t]
        assert body["target_position"] == pytest.approx(target, abs=1e-4), (t, ensemble[t])
        assert body["drawdown_cut"] is cut
    assert max(abs(z["agents"][n] - answers[t]["agents"][n]) for t, z in zip(deep, zeroed, strict=True)
               for n in agents) > 1e-4

    # the request-bars path: every bar up to t (so the indicators have the same history) gives the same decision
    for t in (bars[0], max(bars, key=lambda b: ensemble[b]["drawdown"])):
        upto = market.bars[market.bars["timestamp"] <= stamps[t]]
        payload = request_payload(upto, upto["timestamp"].iloc[-1], len(upto))
        del payload["position"]
        body = c.post("/predict", json={**payload, **request(t, symbol=symbol)}).json()
        assert body["agents"] == pytest.approx(answers[t]["agents"], abs=1e-4), t
        assert body["target_position"] == pytest.approx(answers[t]["target_position"], abs=1e-4), t


def test_request_gives_each_agent_the_account_it_observes():
    """``account`` applies to every agent, ``agent_accounts`` replaces it for one; the legacy ``position`` and
    ``drawdown`` are an account with flat P&L; both forms at once, or values out of range, are rejected naming
    the field."""
    from pydantic import ValidationError

    from raytrade.serving.schemas import Account, PredictRequest

    legacy = PredictRequest.model_validate({"symbol": "BTC/USD", "position": -0.3, "drawdown": 0.1})
    assert legacy.agent_account("ppo") == legacy.ensemble_account == Account(position=-0.3, drawdown=0.1)
    assert PredictRequest(symbol="BTC/USD").agent_account("ppo") == Account()  # a flat, fresh book
    req = PredictRequest.model_validate({"symbol": "BTC/USD",
                                         "account": {"position": 0.5, "unrealised_pnl": 0.02, "drawdown": 0.05},
                                         "agent_accounts": {"sac": {"position": -1.04, "unrealised_pnl": -0.01}}})
    assert req.ensemble_account == req.agent_account("ppo") == Account(position=0.5, unrealised_pnl=0.02, drawdown=0.05)
    assert req.agent_account("sac") == Account(position=-1.04, unrealised_pnl=-0.01, drawdown=0.0)
    for body, loc, words in [
        ({"position": 0.1, "account": {}}, (), "`account` or as the legacy `position`"),
        ({"account": {"unrealised_pnl": -1.2}}, ("account", "unrealised_pnl"), "greater than or equal to -1"),
        ({"account": {"unrealised_pnl": 1e300}}, ("account", "unrealised_pnl"), "less than or equal to 1000"),
        ({"account": {"drawdown": 1.2}}, ("account", "drawdown"), "less than or equal to 1"),
        ({"agent_accounts": {"ppo": {"position": 2.5}}}, ("agent_accounts", "ppo", "position"), "less than or equal"),
        ({"agent_accounts": {"ppo": {"position": float("inf")}}}, ("agent_accounts", "ppo", "position"), "finite"),
    ]:
        with pytest.raises(ValidationError) as err:
            PredictRequest.model_validate({"symbol": "BTC/USD", **body})
        (first,) = err.value.errors()
        assert first["loc"] == loc and words in first["msg"], (body, first)


@pytest.mark.parametrize("max_position", [1.0, 0.5])
@pytest.mark.parametrize("crash", [0.0, 0.3])
def test_combiner_decides_a_bar_as_the_ensemble_backtest_does(max_position, crash):
    """The served combiner on member votes = the backtest's vote ensemble on the members' positions (votes x
    max_position, as the env and the forecaster signal size them) through its risk layer, given the drawdown
    the backtest's equity had at that bar (a ``crash`` loss at bar 10; the limit is 20%)."""
    from raytrade.models.bundle import signal_positions
    from raytrade.rl.ensemble import risk_limit, sharpe_vote
    from raytrade.serving.steps import CombinerConfig, combine

    rng = np.random.default_rng(7)
    votes = {"forecaster": rng.uniform(-1, 1, 50), "ppo": rng.uniform(-1, 1, 50), "sac": np.full(50, 1.0)}
    probs = np.stack([np.clip(-votes["forecaster"], 0, None), np.zeros(50), np.clip(votes["forecaster"], 0, None)], 1)
    positions = {"forecaster": signal_positions(probs, max_position),
                 **{m: v * max_position for m, v in votes.items() if m != "forecaster"}}
    returns = {m: rng.normal(0, 0.01, 50) for m in votes}
    res = sharpe_vote(positions, returns, {m: 0.0 for m in votes}, 10, 8760.0, 1.0)
    limited, cut = risk_limit(res.positions, lambda t, held, new: (-crash if t == 10 else 0.0, new), max_position, 0.2,
                              0.5)
    for t in (0, 10, 25, 49):
        cfg = CombinerConfig(weights=res.weights[t // 10], max_position=max_position, max_drawdown=0.2,
                             drawdown_cut=0.5)
        drawdown = crash if t > 10 else 0.0  # 1 - equity / peak at the close of bar t-1
        served = combine(cfg, {m: float(v[t]) for m, v in votes.items()}, 0.0, drawdown)
        assert served["target_position"] == pytest.approx(limited[t], abs=1e-9), t
        assert served["drawdown_cut"] == bool(cut[t]) == (crash > 0.2 and t > 10)


def test_fuzzed_requests_from_the_openapi_schema_never_get_a_5xx(served):
    """Property-based: for every operation of the served app's own OpenAPI schema (FastAPI's /openapi.json),
    requests that schemathesis generates from it, valid and invalid, never get a 5xx; a 422 names the
    offending field in ``detail[].loc``."""
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{PORT}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /health", "GET /models", "POST /predict", "POST /predict/batch"}
    seen: Counter = Counter()
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:  # noqa: ANN001
                resp = case.call(base_url=f"http://127.0.0.1:{PORT}", timeout=60)
                seen[resp.status_code] += 1
                assert resp.status_code < 500, (case.method, case.path, resp.status_code, resp.text[:500])
                if resp.status_code == 422:
                    detail = resp.json()["detail"]
                    assert detail and all(isinstance(d["loc"], list) and d["msg"] for d in detail), resp.text[:500]

            if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
                continue  # no parameters to break
            check()
    assert seen[422] > 0 and seen[200] > 0, seen
