"""The one-hop Serve app (serve_configs/ensemble.yaml, raytrade.serving.decision) over real HTTP, on the smoke run's
registered models and the session's real Redis server.

It is deployed from the shipped config the way ``serve deploy`` does it (Ray's REST API), only pointed at the
smoke run's registry and Redis: 2 replicas, 1 s health checks. A request may carry only its newest bar; the
replicas share each symbol's bar log in Redis. Checked here: the new-bar path gives the backtest's forecasts bar by
bar over the test split and the same decisions as a whole-history request; bad input is a 422 naming the rule;
and a replica whose process is SIGKILLed under load fails only the requests it held, with 503, while the other
replica goes on answering within a second.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, free_port
from raytrade.pipeline import request_payload

CONFIG = REPO / "serve_configs" / "ensemble.yaml"
PORT = free_port()
KEYS = ("timestamp", "open", "high", "low", "close", "volume")


def _bar(row: pd.Series) -> dict:
    return {"timestamp": pd.Timestamp(row["timestamp"]).isoformat(),
            **{k: float(row[k]) for k in KEYS[1:]}}


def _running() -> bool:
    from ray import serve

    from raytrade.serving.app import APP_NAME

    return serve.status().applications[APP_NAME].status == "RUNNING"


def _deploy(report: dict, runtime_env: dict | None = None) -> None:
    """The shipped config pointed at the smoke run's registry and Redis, deployed as ``serve deploy`` does it."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    raw = yaml.safe_load(CONFIG.read_text())
    raw["http_options"]["port"] = PORT
    app = raw["applications"][0]
    assert app["import_path"] == "raytrade.serving.app:build_decision_app"
    app["args"].update(tracking_uri=report["mlflow"]["tracking_uri"], agent_models=report["mlflow"]["agent_models"],
                       redis_url=report["store"]["url"], store_prefix="onehop")
    (decision,) = app["deployments"]
    decision["user_config"]["combiner"]["weights"] = report["backtest"]["serve_weights"]
    if runtime_env is not None:
        app["runtime_env"] = runtime_env
    ServeSubmissionClient(os.environ["RAYTRADE_TEST_DASHBOARD"]).deploy_applications(raw)


@pytest.fixture(scope="module")
def one_hop(smoke_run):
    from ray import serve

    from raytrade.data import load_bars

    _deploy(smoke_run["report"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if _running() and httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=5).status_code == 200:
                break
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(0.5)
    else:
        raise AssertionError("the one-hop app did not start")
    client = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60)
    bars = load_bars(smoke_run["cfg"].data.path, max_bars=smoke_run["cfg"].data.max_bars)
    yield {**smoke_run, "client": client, "bars": bars}
    client.close()
    serve.shutdown()


def _replica_pids() -> dict[str, int]:
    from ray.util.state import list_actors

    return {a.name: int(a.pid) for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if (a.name or "").startswith("SERVE_REPLICA::raytrade#Decision#")}


def test_models_name_the_app_and_two_replicas_serve(one_hop):
    models = one_hop["client"].get("/models").json()
    assert models["app"] == "one-hop" and models["challenger"] is None
    assert set(models["symbol_states"]) <= {"opened", "rebuilt", "appended", "caught_up"}
    assert set(models["agents"]) == set(one_hop["report"]["mlflow"]["agent_models"])
    assert len(_replica_pids()) == 2


def test_new_bars_give_the_backtests_forecasts_and_the_whole_history_decision(one_hop):
    """The symbol starts with every bar up to the first test bar, then each request carries one new bar: the
    features are then those of the whole history (tests/test_streaming_features.py), so every forecast must be the
    backtest's for that bar; and a request with the whole history gives the same decision as the new-bar one."""
    from raytrade import tracking
    from raytrade.dataset.prepare import load_market_data, prepare_data
    from raytrade.rl.env_inputs import agent_data, bundle_windows

    cfg, report, c = one_hop["cfg"], one_hop["report"], one_hop["client"]
    uri = report["mlflow"]["tracking_uri"]
    bundle, _, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias, uri)
    market = load_market_data(cfg)
    prepared = prepare_data(cfg, market)
    data = agent_data(cfg, prepared, market.bars, bundle, bundle_windows(prepared, bundle))
    stamps = pd.to_datetime(data.timestamps["test"], utc=True)
    probs = data.forecasts["test"]["probs"]
    bars = market.bars.reset_index(drop=True)
    first = int(np.flatnonzero(bars["timestamp"] == stamps[0])[0])
    start = request_payload(bars, stamps[0], first + 1)
    body = c.post("/predict", json={**start, "symbol": "NEWBARS"}).json()
    assert [body["forecast"]["probs"][k] for k in ("sell", "hold", "buy")] == pytest.approx(probs[0], abs=1e-5)
    answers = {0: body}
    for t in range(1, len(stamps)):
        row = bars.iloc[first + t]
        assert row["timestamp"] == stamps[t]
        resp = c.post("/predict", json={"symbol": "NEWBARS", "bars": [_bar(row)]})  # one bar; either replica
        assert resp.status_code == 200, resp.text
        answers[t] = resp.json()
        assert pd.Timestamp(answers[t]["timestamp"]) == stamps[t]
        got = [answers[t]["forecast"]["probs"][k] for k in ("sell", "hold", "buy")]
        assert got == pytest.approx(probs[t], abs=1e-5), t
    for t in (1, len(stamps) // 2, len(stamps) - 1):
        whole = c.post("/predict", json={**request_payload(bars, stamps[t], first + t + 1), "symbol": f"WHOLE{t}"})
        assert whole.json()["agents"] == pytest.approx(answers[t]["agents"], abs=1e-6)
        assert whole.json()["target_position"] == pytest.approx(answers[t]["target_position"], abs=1e-6)
    # a symbol-only request decides at the last bar of the symbol's bar log
    latest = c.post("/predict", json={"symbol": "NEWBARS"}).json()
    assert pd.Timestamp(latest["timestamp"]) == stamps[-1]
    assert latest["forecast"]["probs"] == pytest.approx(answers[len(stamps) - 1]["forecast"]["probs"], abs=1e-9)


def test_bad_new_bars_get_422_naming_the_rule_and_a_resent_bar_the_same_answer(one_hop):
    c, bars = one_hop["client"], one_hop["bars"]
    n = 400
    assert c.post("/predict", json={**request_payload(bars, bars["timestamp"].iloc[n - 1], n),
                                    "symbol": "BAD"}).status_code == 200
    nxt = _bar(bars.iloc[n])
    cases = {
        "ohlc_relation": {**nxt, "high": nxt["low"] * 0.5},
        "duplicate_timestamp": {**_bar(bars.iloc[n - 1]), "close": nxt["close"] * 1.5, "high": nxt["high"] * 1.5},
        "unsorted_timestamps": {**_bar(bars.iloc[n - 50]), "close": nxt["close"] * 1.5, "high": nxt["high"] * 1.5},
    }
    for rule, bar in cases.items():
        resp = c.post("/predict", json={"symbol": "BAD", "bars": [bar]})
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["type"] == rule, resp.text
    unknown = c.post("/predict", json={"symbol": "NEVER-SEEN", "bars": [nxt]})
    assert unknown.status_code == 422 and "send at least" in unknown.text
    malformed = c.post("/predict", json={"symbol": "BAD", "bars": [{**nxt, "close": -1}]})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["loc"][-1] == "close"
    first = c.post("/predict", json={"symbol": "BAD", "bars": [nxt]})
    again = c.post("/predict", json={"symbol": "BAD", "bars": [nxt]})  # a retried request
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()


def test_a_killed_replica_fails_only_its_requests_with_503_and_nobody_waits_over_a_second(one_hop):
    """4 clients post new bars in a closed loop; one Decision replica's process gets SIGKILL. The issue's rule:
    no request stalls more than 1 s, at most the requests in flight on the dead replica fail, with 503 (retry),
    never 500; Serve then brings the deployment back to 2 replicas."""
    c, bars = one_hop["client"], one_hop["bars"]
    clients, n = 4, 400
    for k in range(clients):
        payload = {**request_payload(bars, bars["timestamp"].iloc[n - 1], n), "symbol": f"KILL{k}"}
        assert c.post("/predict", json=payload).status_code == 200
    answered: list[list[float]] = [[] for _ in range(clients)]
    failed: list[tuple[float, int | str]] = []
    stop = threading.Event()
    t_start = time.perf_counter()

    def load(k: int) -> None:
        with httpx.Client(base_url=c.base_url, timeout=60) as client:
            i = n
            while not stop.is_set() and i < len(bars):
                try:
                    code: int | str = client.post("/predict", json={"symbol": f"KILL{k}",
                                                                    "bars": [_bar(bars.iloc[i])]}).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                now = time.perf_counter() - t_start
                if code == 200:
                    answered[k].append(now)
                    i += 1
                else:
                    failed.append((now, code))  # the same bar is sent again: a failed request changed nothing

    threads = [threading.Thread(target=load, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(3.0)
        victim, pid = sorted(_replica_pids().items())[0]
        killed_at = time.perf_counter() - t_start
        os.kill(pid, signal.SIGKILL)
        time.sleep(6.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(code == 503 for _, code in failed), failed  # a lost replica is "retry", never a 500
    assert len(failed) <= clients, failed  # at most the requests in flight (one per closed-loop client)
    for k, times in enumerate(answered):
        assert times and times[-1] > killed_at + 4, (k, times[-5:])  # every client kept being answered
        gaps = np.diff([t for t in times if t >= killed_at - 2])
        assert gaps.max() < 1.0, (k, float(gaps.max()), json.dumps(failed))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (len(_replica_pids()) == 2 and victim not in _replica_pids()):
        time.sleep(1.0)
    assert len(_replica_pids()) == 2 and victim not in _replica_pids()


def test_the_default_serve_config_is_the_one_hop_app_with_failover_settings(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from raytrade.errors import ConfigError
    from raytrade.serving.app import app_from_config
    from raytrade.serving.decision import DecisionConfig

    raw = yaml.safe_load(CONFIG.read_text())
    app = ServeDeploySchema.parse_obj(raw).applications[0]
    assert app.import_path == "raytrade.serving.app:build_decision_app"
    (decision,) = raw["applications"][0]["deployments"]
    assert decision["name"] == "Decision"
    assert decision["autoscaling_config"]["min_replicas"] >= 2  # a replica can die without a stall
    assert decision["health_check_period_s"] <= 1
    DecisionConfig.model_validate(decision["user_config"])
    # the builder refuses what the one-hop app cannot do, and an unknown builder, naming them
    with pytest.raises(ConfigError, match="challenger_model"):
        app_from_config(CONFIG, {"challenger_model": "raytrade-forecaster"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "applications": [{**raw["applications"][0], "import_path": "x:y"}]}))
    with pytest.raises(ConfigError, match="import_path"):
        app_from_config(bad)


def test_the_proxy_middleware_turns_an_unanswered_request_into_a_503_and_leaves_answers_alone():
    """What Serve's proxy does when the replica holding a request dies: it returns without starting a response
    (uvicorn would then send a bare 500). The middleware answers 503 + Retry-After; a started response is untouched."""
    import asyncio

    from raytrade.serving.proxy import ReplicaLostAs503

    async def call(app) -> list[dict]:  # noqa: ANN001
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        await ReplicaLostAs503(app)({"type": "http"}, receive, send)
        return sent

    async def lost(scope, receive, send) -> None:  # noqa: ANN001
        raise RuntimeError("ActorDiedError")

    async def silent(scope, receive, send) -> None:  # noqa: ANN001
        return None

    async def answered(scope, receive, send) -> None:  # noqa: ANN001
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    for app in (lost, silent):
        sent = asyncio.run(call(app))
        assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["detail"][0]["type"] == "replica_unavailable"
    assert [m.get("status") for m in asyncio.run(call(answered))] == [200, None]


def test_with_an_api_key_only_requests_carrying_it_reach_the_models(one_hop, tmp_path):
    """The app redeployed with ``RAYTRADE_API_KEY_FILE`` in its runtime_env (the key in a file, not in the config):
    ``/health`` stays open; a request without the key, with a wrong one or another scheme is 401 with
    ``WWW-Authenticate: Bearer`` and never reaches the models (its symbol gets no bar log in Redis); with the key the
    same request is answered."""
    import secrets

    from raytrade.store import OnlineFeatureStore

    report, c, bars = one_hop["report"], one_hop["client"], one_hop["bars"]
    key = secrets.token_urlsafe(32)
    (tmp_path / "api_key").write_text(key + "\n")
    _deploy(report, {"env_vars": {"RAYTRADE_API_KEY_FILE": str(tmp_path / "api_key")}})
    deadline, refused = time.monotonic() + 240, 0
    while refused < 10:  # every replica of the new version refuses a request without the key
        assert time.monotonic() < deadline, "the app did not come back with the API key"
        try:
            refused = refused + 1 if c.get("/models").status_code == 401 else 0
        except httpx.HTTPError:
            refused = 0
        time.sleep(0.2)
    store = OnlineFeatureStore(report["store"]["url"], feature_set_version="-", prefix="onehop")
    body = {**request_payload(bars, bars["timestamp"].iloc[399], 400), "symbol": "KEYED"}
    assert c.get("/health").status_code == 200
    for headers in ({}, {"Authorization": f"Bearer {key[:-1]}x"}, {"Authorization": f"Basic {key}"},
                    {"Authorization": "Bearer"}):
        resp = c.post("/predict", json=body, headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["detail"][0]["type"] == "unauthorized"
    assert store.last_bar_time("KEYED") is None  # nothing reached the decision
    ok = c.post("/predict", json=body, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200, ok.text
    assert store.last_bar_time("KEYED") == pd.Timestamp(bars["timestamp"].iloc[399])
    models = c.get("/models", headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200 and models.json()["app"] == "one-hop"
