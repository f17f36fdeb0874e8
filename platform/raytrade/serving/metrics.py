"""Custom Ray Serve metrics of the ensemble app (``ray.serve.metrics``; Serve adds the ``deployment``,
``replica`` and ``application`` tags). They are exported on Ray's Prometheus endpoint (the metrics export
port of each node, ``ray start --metrics-export-port``) with Ray's ``ray_`` prefix, e.g.
``ray_raytrade_requests_total{route="/predict",outcome="ok"}``.

| metric | type | tags | unit |
|---|---|---|---|
| ``raytrade_requests`` | counter | route, outcome (ok, invalid, unavailable, error) | requests |
| ``raytrade_request_latency_ms`` | histogram | route | milliseconds, HTTP request in the ingress |
| ``raytrade_model_latency_ms`` | histogram | model (features, forecaster, agent name, combiner) | ms per call |
| ``raytrade_batch_size`` | histogram | model | requests per ``@serve.batch`` call |
| ``raytrade_cache`` | counter | result (hit, miss, unavailable) | lookups |

Metrics are created lazily in the replica that records them (never at import).
"""

from __future__ import annotations

from functools import cache
from typing import Any

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


@cache
def _metrics() -> dict[str, Any]:
    from ray.serve import metrics

    return {
        "requests": metrics.Counter("raytrade_requests", description="HTTP requests by route and outcome.",
                                    tag_keys=("route", "outcome")),
        "request_latency": metrics.Histogram("raytrade_request_latency_ms", description="HTTP request latency (ms).",
                                             boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",)),
        "model_latency": metrics.Histogram("raytrade_model_latency_ms", description="Per-model call latency (ms).",
                                           boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model",)),
        "batch_size": metrics.Histogram("raytrade_batch_size", description="Requests per dynamic batch.",
                                        boundaries=BATCH_BOUNDARIES, tag_keys=("model",)),
        "cache": metrics.Counter("raytrade_cache", description="Prediction cache lookups by result.",
                                 tag_keys=("result",)),
    }


def outcome(status_code: int) -> str:
    """``ok`` (< 400), ``invalid`` (4xx), ``unavailable`` (503), ``error`` (other 5xx)."""
    if status_code < 400:
        return "ok"
    if status_code < 500:
        return "invalid"
    return "unavailable" if status_code == 503 else "error"


def record_request(route: str, status_code: int, latency_ms: float) -> None:
    m = _metrics()
    m["requests"].inc(tags={"route": route, "outcome": outcome(status_code)})
    m["request_latency"].observe(latency_ms, tags={"route": route})


def record_model(model: str, latency_ms: float, batch_size: int | None = None) -> None:
    m = _metrics()
    m["model_latency"].observe(latency_ms, tags={"model": model})
    if batch_size is not None:
        m["batch_size"].observe(batch_size, tags={"model": model})


def record_cache(result: str) -> None:
    _metrics()["cache"].inc(tags={"result": result})
