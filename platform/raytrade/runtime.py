"""Run-time helpers shared by the stages and the job scripts: progress lines, the Ray connection,
the jobs' command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from raytrade.config import PipelineConfig, load_config, parse_overrides
from raytrade.errors import RaytradeError


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


#: Ray Serve's proxy takes ASGI middlewares from this callback; raytrade's makes a lost replica's requests 503
SERVE_PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "raytrade.serving.proxy:get_middlewares")


def enable_serve_proxy_503() -> None:
    """Before ``ray.init`` starts a local cluster: put :data:`SERVE_PROXY_CALLBACK` in this process's environment
    (unless set), so Serve's HTTP proxy, which inherits it, answers 503 instead of 500 for requests whose replica
    died (:mod:`raytrade.serving.proxy`). A cluster joined keeps its own environment."""
    os.environ.setdefault(*SERVE_PROXY_CALLBACK)


def ensure_ray(cfg: PipelineConfig) -> bool:
    """Connect to / start Ray; returns True when this call started it (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    # inside a Ray job (or with RAY_ADDRESS set) ray.init() joins that cluster, which takes no num_cpus
    joins = cfg.ray.address is not None or bool(os.environ.get("RAY_ADDRESS"))
    enable_serve_proxy_503()
    ray.init(address=cfg.ray.address, num_cpus=None if joins else cfg.ray.num_cpus,
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


def job_arguments(doc: str, argv: list[str] | None = None,
                  add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The command line every ``jobs/<stage>.py`` takes: ``--config FILE [--data PATH] [--set S.F=V ...]``
    (plus what ``add`` adds); ``--help`` prints the job's docstring. ``args.config`` is the loaded
    :class:`PipelineConfig` with the overrides applied.

    Raises:
        ConfigError: the config file is missing or invalid, or an override is malformed.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. jobs/configs/smoke.yaml")
    parser.add_argument("--data", default=None, help="override data.path (file, directory or glob of bars)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set train.epochs=2 --set output_dir=/shared/runs "
                             "(value parsed as YAML; repeatable)")
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    args.config = load_config(args.config, parse_overrides(args.overrides))
    return args


@contextmanager
def job_errors(debug: bool | None = None) -> Iterator[None]:
    """Run a job's body: a :class:`~raytrade.errors.RaytradeError` prints ONE line to stderr and exits 1
    (the traceback too when ``RAYTRADE_DEBUG=1`` or ``debug``), as the CLI does."""
    try:
        yield
    except RaytradeError as exc:
        if debug or os.environ.get("RAYTRADE_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
