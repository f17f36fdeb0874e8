"""Run-time helpers shared by the stages: progress lines and the Ray connection."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from raytrade.config import PipelineConfig


@dataclass
class Progress:
    """Prints ``[i/n] stage ... done in s`` lines to stderr and keeps the timings."""

    total: int
    stream: Any = field(default=sys.stderr)
    timings: dict[str, float] = field(default_factory=dict)
    _i: int = 0
    _t0: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[None]:
        self._i += 1
        print(f"[{self._i}/{self.total}] {title} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - start, 2)
        print(f"[{self._i}/{self.total}] {title}: done in {self.timings[key]:.1f}s "
              f"(total {time.perf_counter() - self._t0:.0f}s)", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        print(f"      {message}", file=self.stream, flush=True)


def ensure_ray(cfg: PipelineConfig) -> bool:
    """Connect to / start Ray; returns True when this call started it (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus if cfg.ray.address is None else None,
             include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    return True


def quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


@contextmanager
def ray_session(cfg: PipelineConfig) -> Iterator[None]:
    """Ray for the duration of a stage: connect or start (and then stop) a local instance, quiet Ray Data."""
    started = ensure_ray(cfg)
    try:
        quiet_ray_data()
        yield
    finally:
        if started:
            import ray

            ray.shutdown()
