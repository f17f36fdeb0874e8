"""Run the benchmarks: ``python -m benchmarks [NAME ...]``.

Without names every benchmark runs, in the order of :data:`BENCHMARKS`; with names only those run
(in the order given). Each benchmark writes ``benchmarks/results/<name>.json`` and ``<name>.md`` and
its markdown table is printed here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

#: benchmark name -> module (each module has ``NAME``, ``TITLE`` and ``run() -> str`` returning markdown).
#: Modules are named either ``<name>.py`` or ``bench_<name>.py``.
BENCHMARKS: dict[str, str] = {
    "features": "benchmarks.features",
    "env": "benchmarks.env",
    "training": "benchmarks.training",
    "rl": "benchmarks.rl",
    "portfolio": "benchmarks.portfolio",
    "serve_load": "benchmarks.serve_load",
    "portfolio_serve": "benchmarks.portfolio_serve",
}


def _resolve(name: str, parser: argparse.ArgumentParser) -> str:
    """Accept ``features``, ``features.py``, ``benchmarks/features.py``, ``benchmarks.features``, ``bench_env``."""
    key = name.replace("/", ".").removesuffix(".py").removeprefix("benchmarks.").removeprefix("bench_")
    if key not in BENCHMARKS:
        parser.error(f"unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)}")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run ({', '.join(BENCHMARKS)})")
    args = parser.parse_args(argv)
    names = [_resolve(n, parser) for n in args.names] or list(BENCHMARKS)
    names = list(dict.fromkeys(names))  # keep order, drop repeats

    start = time.perf_counter()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"== running {name} ({module.TITLE}) ==", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        markdown = module.run()
        print(markdown.rstrip() + "\n", flush=True)
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s ==", file=sys.stderr, flush=True)
    print(f"== all done in {time.perf_counter() - start:.1f} s ==", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
