"""``POST /portfolio`` at 30 assets: closed-loop latency of the Ray Serve portfolio app against the in-process
compute of the same decision.

Data: the 29 Dow stocks of ``../shared/data/stooq_dow30_1d.parquet`` and SPY of
``../shared/data/lean_us_equity_etf_1d.parquet`` within the Dow file's dates (daily,
:func:`benchmarks.portfolio.universe_30`), written as one long-format parquet; the run keeps the bars
from :data:`START` (``data.symbol_policy: exclude``: a symbol that fails validation is left out and the report says
how many were served). The universe pipeline (:func:`raytrade.pipeline.run_pipeline`) trains a tiny pooled
forecaster (lookback 16, 8 conv channels, LSTM 16, 8 MC-dropout passes, one epoch) and one PPO portfolio agent (one
short iteration) in a temporary MLflow store, or an existing run is reused (``RAYTRADE_BENCH_PORTFOLIO_RUN=<its
output_dir>``; its Redis is reused when it answers). The app is deployed as the tests deploy it
(:func:`raytrade.serving.deploy.deploy_portfolio` with
:meth:`~raytrade.serving.portfolio_steps.PortfolioParams.from_run` and the run's agent, default deployment options).

Every request is ``{"bars": {symbol: last N bars}, "weights": the run's last forecaster_risk_limited book,
"drawdown": 0.0}`` with N the fewest bars the app decides on with the turbulence rule on:
``max(min_bars(spec), portfolio.turbulence_window + 2)`` (feature and cross-sectional warm-up + lookback; 252-bar
turbulence window + 2); :data:`N_BODIES` distinct bodies end at bars spread over the test split (bodies are
JSON-encoded once, before the clock starts; the encoding time and size are reported).

* **Serve, closed loop** at concurrency 1 and 8 over real HTTP (httpx): each client sends its next request when
  the last one answers, for ``RAYTRADE_BENCH_PORTFOLIO_SECONDS`` (default 15) after a 3 s warm-up; the requests
  started in that window count, each awaited to its answer (at concurrency 8 one takes seconds); p50/p95/p99
  latency (ms), requests/s, errors (any non-200). The app is the default one-hop app
  (:mod:`raytrade.serving.portfolio_decision`, one replica); replica counts before and after the load are reported.
* **New bars** (the one-hop app's universe state): one client sends a full history once, then steps through the
  calendar, each request carrying every symbol's last bar sent and its new bar, in time order, for the same
  seconds. The same bodies with a book of an agent the app does not serve are refused (422) before any work: that
  latency is the floor of HTTP, Serve's proxy and FastAPI's parsing under any answer.
* **Composed app** (a deployment per stage, ``app="composed"``), whole histories at concurrency 1: the starting
  point.
* **Baseline, in process** (no HTTP, no Serve, 1 torch thread as in a replica): the functions the composed app's
  ingress and deployments call for one whole-history request, step by step (pydantic parse, request checks and bar
  frames, :func:`~raytrade.serving.portfolio_steps.universe_features`, :func:`~raytrade.serving.steps.forecast_items`
  with MC dropout, :func:`~raytrade.serving.portfolio_steps.decide`, the agent's
  :func:`~raytrade.serving.portfolio_steps.agent_weights`, the response's JSON), medians over :data:`REPEATS`
  decisions cycling through the same bodies; and a new-bar decision of
  :class:`~raytrade.serving.portfolio_decider.PortfolioDecider` (the one-hop app's), step by step. Serve's p50 at
  concurrency 1 over each is the overhead ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.serve_load import WARMUP_S

NAME = "portfolio_serve"
TITLE = "POST /portfolio at 30 assets: Ray Serve latency (whole histories and new bars) vs in process"
CONCURRENCY = (1, 8)
N_BODIES = 16
REPEATS = 20
START = "2013-01-01"


def _seconds() -> float:
    return float(os.environ.get("RAYTRADE_BENCH_PORTFOLIO_SECONDS", "15"))


def _log(msg: str) -> None:
    print(f"[{NAME}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data + run
def universe_file(path: Path) -> dict[str, Any]:
    """Write the 30-asset long-format bars (:func:`benchmarks.portfolio.universe_30`) to ``path``."""
    from benchmarks.portfolio import universe_30

    bars = universe_30()
    bars.to_parquet(path, index=False)
    return {"path": str(path), "symbols": int(bars["symbol"].nunique()), "bars": len(bars)}


def _config(workdir: Path, data_path: Path, redis_url: str) -> dict[str, Any]:
    return {
        "name": "bench-portfolio-serve", "output_dir": str(workdir / "run"),
        "data": {"path": str(data_path), "start": START, "symbol_policy": "exclude"},
        "features": {"reference_symbol": "SPY"},
        "labels": {"horizon": 5, "threshold": 0.01},
        "model": {"lookback": 16, "conv_channels": 8, "lstm_hidden": 16, "mc_samples": 8},
        "train": {"epochs": 1, "batch_size": 256},
        "rl": {"window": 4, "agents": ["ppo"], "iterations": 1, "train_batch_size": 256, "minibatch_size": 64,
               "num_epochs": 1, "episode_length": 100, "hidden": [32, 32]},
        "walk_forward": {"n_bootstrap": 50},
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        "serve": {"enabled": False},
        "store": {"enabled": True, "url": redis_url, "prefix": "bench-portfolio"},
    }


def _reused_report() -> tuple[Path, dict[str, Any]] | None:
    """The report of ``RAYTRADE_BENCH_PORTFOLIO_RUN`` (an output_dir), or None when the variable is unset."""
    reuse = os.environ.get("RAYTRADE_BENCH_PORTFOLIO_RUN")
    if not reuse:
        return None
    reports = sorted(Path(reuse).glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise FileNotFoundError(f"no <run>/report.json under {reuse}")
    return reports[-1], json.loads(reports[-1].read_text())


def _run(workdir: Path, redis_url: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(config, report, info) of the universe run to serve: ``RAYTRADE_BENCH_PORTFOLIO_RUN`` (an output_dir) or a
    fresh one trained here."""
    from raytrade.config import parse_config
    from raytrade.pipeline import run_pipeline

    reused = _reused_report()
    if reused:
        path, report = reused
        cfg = parse_config(report["config"])
        if not cfg.store.enabled or cfg.store.url != redis_url:
            raise ValueError(f"{path}: the reused run must have published its windows to {redis_url}")
        return cfg, report, {"reused": str(path.parent), "train_s": None}
    data = universe_file(workdir / "universe30.parquet")
    cfg = parse_config(_config(workdir, Path(data["path"]), redis_url))
    _log(f"training the universe run on {data['symbols']} symbols from {START} (tiny model, 1 epoch, PPO 1 iteration)")
    t0 = time.perf_counter()
    report = run_pipeline(cfg)
    return cfg, report, {"reused": None, "train_s": time.perf_counter() - t0, "input": data}


def _params(cfg: Any, report: dict[str, Any]) -> Any:
    from raytrade.serving.portfolio_steps import PortfolioParams

    agent_models = report["mlflow"]["agent_models"]
    reference = cfg.features.reference_symbol or report["backtest"]["symbols"][0]
    return PortfolioParams.from_run(cfg, report["backtest"], reference, report["model_versions"]["forecaster"],
                                    {name: report["model_versions"][name] for name in agent_models})


def _bodies(cfg: Any, report: dict[str, Any], n_bars: int) -> tuple[list[bytes], dict[str, Any]]:
    """:data:`N_BODIES` request bodies ending at test bars spread over the test split, and what they hold."""
    from raytrade.dataset.prepare import load_universe_data
    from raytrade.pipeline import portfolio_payload

    universe = load_universe_data(cfg)
    bt = report["backtest"]
    symbols = list(bt["symbols"])
    bars = universe.bars[universe.bars["symbol"].isin(symbols)]
    stamps = pd.DatetimeIndex(universe.panel.timestamps)
    test = stamps[(stamps >= pd.Timestamp(bt["first_bar"])) & (stamps <= pd.Timestamp(bt["last_bar"]))]
    ends = test[np.unique(np.linspace(0, len(test) - 1, N_BODIES).round().astype(int))]
    last = report["strategies"]["forecaster_risk_limited"]["weights"]
    held = {s: float(w) for s, w in last.items() if s in symbols and abs(float(w)) > 1e-9}
    payloads = [portfolio_payload(bars, end, n_bars, held, 0.0) for end in ends]
    encode, bodies = [], []
    for p in payloads:
        t0 = time.perf_counter()
        bodies.append(json.dumps(p).encode())
        encode.append((time.perf_counter() - t0) * 1e3)
    return bodies, {"ends": [e.isoformat() for e in ends], "held_weights": held, "symbols": symbols,
                    "excluded": dict(universe.excluded), "kb_median": statistics.median(len(b) for b in bodies) / 1024,
                    "json_encode_ms_median": statistics.median(encode)}


def _new_bar_bodies(cfg: Any, report: dict[str, Any], n_bars: int) -> tuple[bytes, list[bytes], dict[str, Any]]:
    """A full-history body (``n_bars`` bars of every symbol) at the first bar every symbol has them, then one body
    per later bar of the calendar with each symbol's last bar sent and its new bar (the one-hop app's new-bar
    request), in time order, each with the run's last book as ``weights``."""
    from raytrade.dataset.prepare import load_universe_data
    from raytrade.pipeline import portfolio_payload

    universe = load_universe_data(cfg)
    symbols = list(report["backtest"]["symbols"])
    bars = universe.bars[universe.bars["symbol"].isin(symbols)]
    stamps = pd.DatetimeIndex(universe.panel.timestamps)
    counts = bars.groupby("symbol")["timestamp"].apply(lambda t: pd.DatetimeIndex(t).sort_values()[n_bars - 1])
    start = stamps.searchsorted(counts.max())
    last = report["strategies"]["forecaster_risk_limited"]["weights"]
    held = {s: float(w) for s, w in last.items() if s in symbols and abs(float(w)) > 1e-9}
    opening = json.dumps(portfolio_payload(bars, stamps[start], n_bars, held, 0.0)).encode()
    bodies = [json.dumps(portfolio_payload(bars[bars["timestamp"] >= stamps[i - 1]], t, 2, held, 0.0)).encode()
              for i, t in enumerate(stamps[start + 1:], start=start + 1)]
    return opening, bodies, {"open_at": stamps[start].isoformat(), "bars": len(bodies),
                             "first": stamps[start + 1].isoformat(), "last": stamps[-1].isoformat(),
                             "kb_median": statistics.median(len(b) for b in bodies) / 1024}


def _compute_new_bar(cfg: Any, report: dict[str, Any], params: Any, opening: bytes,
                     bodies: list[bytes]) -> dict[str, Any]:
    """Median in-process ms per step of a new-bar ``POST /portfolio`` decision of the one-hop app
    (:class:`~raytrade.serving.portfolio_decider.PortfolioDecider` after a full history; 1 torch thread)."""
    import torch

    from benchmarks.common import StepTimer
    from raytrade.serving.portfolio_decider import PortfolioDecider
    from raytrade.serving.portfolio_schemas import PortfolioRequest
    from raytrade.serving.slots import load_registered

    torch.set_num_threads(1)
    uri = report["mlflow"]["tracking_uri"]
    fc = load_registered(uri, cfg.tracking.forecaster_model, cfg.tracking.alias, params.forecaster_version)
    agents = {n: load_registered(uri, m, cfg.tracking.alias, params.agent_versions.get(n))
              for n, m in report["mlflow"]["agent_models"].items()}
    decider = PortfolioDecider()
    timed = StepTimer()
    t0 = time.perf_counter()
    decider.decide(fc, agents, params, PortfolioRequest.model_validate_json(opening))
    open_ms = (time.perf_counter() - t0) * 1e3
    warmup, n = 3, min(REPEATS * 5, len(bodies))
    for i in range(n):
        req = timed("parse request (pydantic)", PortfolioRequest.model_validate_json, bodies[i])
        resp = decider.decide(fc, agents, params, req, timed)
        timed("response JSON", resp.model_dump_json)
        if i < warmup:
            timed.clear()
    med = timed.medians()
    med["total"] = sum(med.values())
    return {"repeats": n - warmup, "steps_ms": med, "open_ms": open_ms, "counts": dict(decider.counts)}


# ---------------------------------------------------------------------------------------------- in process
def _compute(cfg: Any, report: dict[str, Any], params: Any, bodies: list[bytes]) -> dict[str, Any]:
    """Median in-process ms per step of one ``POST /portfolio`` decision (1 torch thread, as in a replica)."""
    import torch

    from benchmarks.common import StepTimer
    from raytrade.serving.portfolio_app import bars_frame, check_request
    from raytrade.serving.portfolio_schemas import PortfolioRequest
    from raytrade.serving.portfolio_steps import agent_items, agent_weights, decide, universe_features
    from raytrade.serving.slots import load_registered
    from raytrade.serving.steps import forecast_items, forecaster_spec

    torch.set_num_threads(1)
    uri = report["mlflow"]["tracking_uri"]
    fc = load_registered(uri, cfg.tracking.forecaster_model, cfg.tracking.alias, params.forecaster_version)
    agents = {n: load_registered(uri, m, cfg.tracking.alias, params.agent_versions.get(n))
              for n, m in report["mlflow"]["agent_models"].items()}
    spec = forecaster_spec(fc.obj, fc.version)
    timed = StepTimer()

    def frames_of(req: PortfolioRequest) -> tuple[list[str], dict[str, pd.DataFrame]]:
        symbols = check_request(req, params)
        return symbols, {s: bars_frame(s, req.bars[s]) for s in symbols}

    def agents_of(req: PortfolioRequest, feats: dict[str, Any], by_symbol: dict[str, Any]) -> dict[str, Any]:
        items = agent_items(feats, by_symbol)
        return {n: agent_weights(a.obj, items, req.weights, req.unrealised_pnl, req.drawdown, params.limits())
                for n, a in agents.items()}

    warmup = 3
    for i in range(REPEATS + warmup):
        req = timed("parse request (pydantic)", PortfolioRequest.model_validate_json, bodies[i % len(bodies)])
        symbols, frames = timed("checks + bar frames", frames_of, req)
        feats = timed("validate + features + turbulence", universe_features, frames, spec,
                      params.reference_symbol, params.turbulence_window)
        with_rows = list(feats["rows"])
        items = [{"rows": feats["rows"][s], "feature_set_version": spec["feature_set_version"]} for s in with_rows]
        outs = timed(f"forecaster + MC dropout ({len(items)} windows)", forecast_items, fc.obj, fc.version, items)
        by_symbol = dict(zip(with_rows, outs, strict=True))
        decision = timed("decide (portfolio_decision)", decide, params, symbols,
                         {s: o["forecast"]["expected_return"] for s, o in by_symbol.items()}, feats["tradable"],
                         req.weights, req.drawdown, float(feats["turbulence"]), req.rebalance)
        agent_w = timed(f"agents ({', '.join(agents)})", agents_of, req, feats, by_symbol)

        timed("response JSON", _response_json, feats, by_symbol, agent_w, fc.version, decision)
        if i < warmup:
            timed.clear()
    med = timed.medians()
    med["total"] = sum(med.values())
    return {"mc_samples": int(fc.obj.mc_samples), "lookback": int(fc.obj.lookback), "repeats": REPEATS,
            "steps_ms": med, "forecaster_version": fc.version}


def _response_json(feats: dict[str, Any], by_symbol: dict[str, Any], agent_w: dict[str, Any], version: str,
                   decision: dict[str, Any]) -> bytes:
    """The response body as the ingress builds it (:class:`PortfolioResponse`), JSON-encoded."""
    from raytrade.serving.portfolio_schemas import PortfolioResponse

    return PortfolioResponse(timestamp=feats["timestamp"], forecasts={s: o["forecast"] for s, o in by_symbol.items()},
                             agents=agent_w, model_versions={"forecaster": version}, tradable=feats["tradable"],
                             **decision).model_dump_json().encode()


# ---------------------------------------------------------------------------------------------- serve
def _new_bar_loop(url: str, opening: bytes | None, bodies: list[bytes], expect: int = 200) -> dict[str, Any]:
    """One client stepping the universe bar by bar: the full history ``opening`` (untimed), then each new-bar body in
    time order as soon as the last is answered, for :func:`_seconds` after a warm-up (or until the bars run out).
    ``expect``: the status that counts as answered (the floor run sends bodies the app refuses at once, 422)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        if opening is not None:
            first = client.post("/portfolio", content=opening, headers={"content-type": "application/json"})
            if first.status_code != 200:
                raise RuntimeError(f"POST /portfolio (full history) answered {first.status_code}: "
                                   f"{first.text[:2000]}")
        start = time.perf_counter()
        measured_from, end = start + WARMUP_S, start + WARMUP_S + _seconds()
        records: list[tuple[float, float, int]] = []
        for body in bodies:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            code = client.post("/portfolio", content=body, headers={"content-type": "application/json"}).status_code
            records.append((t0, time.perf_counter(), code))
    window = [(t0, t1, c) for t0, t1, c in records if t0 >= measured_from]
    ok = np.array([(t1 - t0) * 1e3 for t0, t1, c in window if c == expect])
    span = (window[-1][1] - window[0][0]) if window else float("nan")
    pct = (lambda q: float(np.percentile(ok, q))) if len(ok) else (lambda q: float("nan"))
    return {"concurrency": 1, "requests": len(window), "ok": int(len(ok)), "errors": len(window) - int(len(ok)),
            "status_codes": dict(Counter(str(c) for _, _, c in window)), "seconds": span,
            "requests_per_s": len(ok) / span if window else float("nan"),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "bars_sent": len(records)}


def _composed(cfg: Any, report: dict[str, Any], params: Any, bodies: list[bytes]) -> dict[str, Any]:
    """The composed app (a deployment per stage, ``app="composed"``) beside the one-hop one, at ``/composed``:
    whole-history requests at concurrency 1 (the starting point of the one-hop app)."""
    from ray import serve

    from benchmarks.serve_load import _closed_loop, _wait_http
    from raytrade.serving.deploy import deploy_portfolio
    from raytrade.serving.portfolio_app import PORTFOLIO_APP_NAME

    url = deploy_portfolio(cfg, report["mlflow"]["tracking_uri"], params, route_prefix="/composed",
                           agent_models=report["mlflow"]["agent_models"], app="composed")
    try:
        _wait_http(url + "/health")
        row = asyncio.run(_closed_loop(url, "/portfolio", bodies, 1, _seconds(), count_started=True))
        _log(f"composed c=1: p50 {row['p50_ms']:.1f} ms, {row['requests_per_s']:.2f} req/s, {row['errors']} errors")
    finally:
        serve.delete(f"{PORTFOLIO_APP_NAME}-composed")
    return row


def _serve(cfg: Any, report: dict[str, Any], params: Any, bodies: list[bytes], symbols: list[str],
           opening: bytes, new_bars: list[bytes]) -> dict[str, Any]:
    import httpx

    from benchmarks.serve_load import _closed_loop, _free_port, _replicas, _wait_http
    from raytrade.serving.deploy import deploy_portfolio
    from raytrade.serving.portfolio_app import PORTFOLIO_APP_NAME

    port = _free_port()
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"host": "127.0.0.1", "port": port})})
    t0 = time.perf_counter()
    url = deploy_portfolio(cfg, report["mlflow"]["tracking_uri"], params, agent_models=report["mlflow"]["agent_models"])
    _wait_http(url + "/health")
    deploy_s = time.perf_counter() - t0
    first = httpx.post(url + "/portfolio", content=bodies[-1], headers={"content-type": "application/json"},
                       timeout=120)
    if first.status_code != 200:
        raise RuntimeError(f"POST /portfolio answered {first.status_code}: {first.text[:2000]}")
    body = first.json()
    before = _replicas(PORTFOLIO_APP_NAME)
    rows = []
    for c in CONCURRENCY:
        row = asyncio.run(_closed_loop(url, "/portfolio", bodies, c, _seconds(), count_started=True))
        _log(f"c={c}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {row['requests_per_s']:.2f} req/s, "
             f"{row['errors']} errors")
        rows.append(row)
    # the online-store path: symbol names only, every symbol's latest window read from Redis (the run's last bar)
    store_body = json.dumps({"symbols": symbols}).encode()
    stored = httpx.post(url + "/portfolio", content=store_body, headers={"content-type": "application/json"},
                        timeout=120)
    if stored.status_code != 200:
        raise RuntimeError(f"POST /portfolio {{symbols}} answered {stored.status_code}: {stored.text[:2000]}")
    store_rows = []
    for c in CONCURRENCY:
        row = asyncio.run(_closed_loop(url, "/portfolio", [store_body], c, _seconds(), count_started=True))
        _log(f"store c={c}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
             f"{row['requests_per_s']:.2f} req/s, {row['errors']} errors")
        store_rows.append(row)
    new_bar = _new_bar_loop(url, opening, new_bars)
    _log(f"new bars c=1: p50 {new_bar['p50_ms']:.1f} ms, p99 {new_bar['p99_ms']:.1f} ms, "
         f"{new_bar['requests_per_s']:.2f} req/s, {new_bar['errors']} errors")
    new_bar["models"] = httpx.get(url + "/models", timeout=30).json().get("universe_state")
    # the floor: the same bodies with a book of an agent the app does not serve, refused (422) before any work
    refused = [json.dumps({**json.loads(b), "agent_books": {"none": {}}}).encode() for b in new_bars[:400]]
    floor = _new_bar_loop(url, None, refused, expect=422)
    _log(f"floor (422 before any work) c=1: p50 {floor['p50_ms']:.1f} ms")
    new_bar["floor"] = floor
    composed = _composed(cfg, report, params, bodies)
    return {"url": url, "deploy_s": deploy_s, "load": rows, "store_load": store_rows, "new_bar": new_bar,
            "composed": composed,
            "store_timestamp": stored.json()["timestamp"], "replicas_before_load": before,
            "replicas_after_load": _replicas(PORTFOLIO_APP_NAME),
            "sample": {"timestamp": body["timestamp"], "forecasts": len(body["forecasts"]),
                       "gross_exposure": body["gross_exposure"], "risk": body["risk"],
                       "agents": list(body["agents"]), "response_kb": len(first.content) / 1024}}


# ---------------------------------------------------------------------------------------------- report
def _counts(replicas: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in replicas.items())


def _markdown(res: dict[str, Any]) -> str:
    from benchmarks.common import busy_note

    comp, req, serve = res["compute"], res["requests"], res["serve"]
    sample = serve["sample"]
    run = res["run"]
    source = (f"reused run `{run['reused']}`" if run["reused"] else
              f"trained here in {run['train_s']:.0f} s (`run_pipeline`, from {START}, 1 epoch, PPO 1 iteration)")
    excluded = req["excluded"]
    lines = [f"# {TITLE}", "", busy_note(res["load_average_at_start"]),
             f"Universe: **{len(req['symbols'])} symbols served** (29 Dow stocks + SPY offered"
             + (f"; excluded by `data.symbol_policy: exclude`: {', '.join(excluded)}" if excluded
                else "; none excluded")
             + f"); {source}. Forecaster lookback {comp['lookback']}, {comp['mc_samples']} MC-dropout passes; "
             f"agents {', '.join(res['agent_models']) or 'none'}.",
             "",
             f"Requests: `POST /portfolio` with the last {res['n_bars']} bars of every symbol (the fewest the app "
             f"decides on with the turbulence rule on: max(min_bars {res['min_bars']}, turbulence_window + 2 = "
             f"{res['turbulence_window'] + 2})), the run's last book as `weights`, {len(req['ends'])} distinct bodies "
             f"ending at test bars {req['ends'][0][:10]} -> {req['ends'][-1][:10]}; body {req['kb_median']:.0f} KB "
             f"(JSON encoding {req['json_encode_ms_median']:.1f} ms, done once before timing), response "
             f"{sample['response_kb']:.1f} KB. Closed loop, {res['seconds']:g} s per level after a "
             f"{WARMUP_S:g} s warm-up.", "",
             "| path | concurrency | p50 ms | p95 ms | p99 ms | requests/s | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in serve["load"]:
        lines.append(f"| Ray Serve, HTTP | {r['concurrency']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['requests_per_s']:.2f} | {r['errors']} |")
    for r in serve["store_load"]:
        lines.append(f"| Ray Serve, HTTP, `{{\"symbols\": [...]}}` from Redis | {r['concurrency']} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests_per_s']:.2f} | "
                     f"{r['errors']} |")
    nb, cnew, nbr = serve["new_bar"], res["compute_new_bar"], res["new_bar_requests"]
    lines.append(f"| **Ray Serve, HTTP, new bars** (one-hop app, universe state) | 1 | **{nb['p50_ms']:.1f}** | "
                 f"{nb['p95_ms']:.1f} | {nb['p99_ms']:.1f} | {nb['requests_per_s']:.2f} | {nb['errors']} |")
    comp_row = serve["composed"]
    lines.append(f"| Ray Serve, HTTP, composed app (a deployment per stage) | 1 | {comp_row['p50_ms']:.1f} | "
                 f"{comp_row['p95_ms']:.1f} | {comp_row['p99_ms']:.1f} | {comp_row['requests_per_s']:.2f} | "
                 f"{comp_row['errors']} |")
    total = comp["steps_ms"]["total"]
    total_new = cnew["steps_ms"]["total"]
    lines += [f"| in process (baseline), median of {comp['repeats']} | 1 | {total:.1f} | | | {1e3 / total:.2f} | |",
              f"| in process, new bars (`PortfolioDecider`), median of {cnew['repeats']} | 1 | {total_new:.1f} | | | "
              f"{1e3 / total_new:.2f} | |",
              "", f"The new-bar row steps one client through the calendar: a full history of every symbol at "
              f"{nbr['open_at'][:10]} (untimed), then per bar a body with each symbol's last bar sent and its new bar "
              f"({nbr['kb_median']:.1f} KB), in time order, {nb['requests']} requests timed after the warm-up "
              f"(universe state: {nb['models']}). The app keeps the universe's feature state "
              "(`StreamingUniverse`): one timestamp's features, cross-section and turbulence index per request.",
              "", "In-process steps of a new-bar decision (median ms, 1 torch thread):", "", "| step | ms |",
              "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in cnew["steps_ms"].items()]
    lines += [f"| (opening the state on the full history, once) | {cnew['open_ms']:.0f} |",
              "", "The Redis rows send only the symbol names: the app reads each symbol's latest window and bars "
              "that the pipeline published (`store.enabled`; the run's last bar, "
              f"{serve['store_timestamp'][:10]}) instead of computing features from the request's bars.",
              "", f"**Overhead**, whole history: Serve p50 at concurrency 1 / in-process median = "
              f"**{res['overhead_ratio']:.2f}x** "
              f"({serve['load'][0]['p50_ms'] - total:+.1f} ms per request: the body over HTTP, FastAPI's JSON "
              "parsing and Serve's proxy; the client shares the CPUs). New bars: "
              f"{nb['p50_ms'] / total_new:.2f}x ({nb['p50_ms'] - total_new:+.1f} ms); the same bodies refused at once "
              f"(422, a book of an agent the app does not serve: HTTP, the proxy, the replica's FastAPI parsing, no "
              f"work) take {nb['floor']['p50_ms']:.1f} ms at the median, the floor under any new-bar answer.", "",
              f"Replicas (deployment defaults, `serve.status()`): before the load "
              f"{_counts(serve['replicas_before_load'])}; after it {_counts(serve['replicas_after_load'])}. "
              f"Sample answer at {sample['timestamp'][:10]}: {sample['forecasts']} forecasts, gross exposure "
              f"{sample['gross_exposure']:.2f}, turbulence rule {sample['risk']['turbulence_rule']}, agents "
              f"{', '.join(sample['agents']) or 'none'}.", "",
              "In-process steps (median ms, 1 torch thread):", "", "| step | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in comp["steps_ms"].items()]
    lines += ["", f"Deploy (`deploy_portfolio` until `/health` answers): {serve['deploy_s']:.1f} s.", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def _store(workdir: Path) -> Iterator[str]:
    """The reused run's Redis when it answers (its windows are there), else a fresh server for a fresh run."""
    from benchmarks.common import redis_server

    reused = _reused_report()
    if reused:
        import redis

        from raytrade.config import parse_config

        url = parse_config(reused[1]["config"]).store.url
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        except redis.exceptions.ConnectionError:
            url = None
        if url:
            yield url
            return
    with redis_server(workdir) as url:
        yield url


def run() -> str:
    import ray
    from ray import serve

    from benchmarks.common import load_average, write_results
    from raytrade.serving.portfolio_steps import min_bars
    from raytrade.serving.steps import forecaster_spec
    from raytrade.tracking import load_model_dir

    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="portfolio_serve_") as tmp, _store(Path(tmp)) as redis_url:
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        try:
            cfg, report, run_info = _run(Path(tmp), redis_url)
            params = _params(cfg, report)
            bundle, version, _ = load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias,
                                                report["mlflow"]["tracking_uri"], version=params.forecaster_version)
            need = min_bars(forecaster_spec(bundle, version))
            n_bars = max(need, params.turbulence_window + 2)
            bodies, requests = _bodies(cfg, report, n_bars)
            _log(f"{len(requests['symbols'])} symbols, {n_bars} bars each, {requests['kb_median']:.0f} KB per body")
            compute = _compute(cfg, report, params, bodies)
            _log(f"in process: {compute['steps_ms']['total']:.1f} ms per decision")
            opening, new_bars, new_bar_info = _new_bar_bodies(cfg, report, n_bars)
            compute_new = _compute_new_bar(cfg, report, params, opening, new_bars)
            _log(f"in process, new bar: {compute_new['steps_ms']['total']:.1f} ms per decision")
            served = _serve(cfg, report, params, bodies, requests["symbols"], opening, new_bars)
        finally:
            serve.shutdown()
            ray.shutdown()
    p50 = served["load"][0]["p50_ms"]
    res = {"seconds": _seconds(), "warmup_s": WARMUP_S, "n_bodies": N_BODIES, "n_bars": n_bars, "min_bars": need,
           "turbulence_window": params.turbulence_window, "run": run_info,
           "agent_models": report["mlflow"]["agent_models"], "params": params.model_dump(mode="json"),
           "requests": requests, "compute": compute, "serve": served, "new_bar_requests": new_bar_info,
           "compute_new_bar": compute_new,
           "overhead_ratio": p50 / compute["steps_ms"]["total"], "load_average_at_start": load_at_start}
    markdown = _markdown(res)
    write_results(NAME, res, markdown)
    return markdown
