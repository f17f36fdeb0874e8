"""Ray Jobs: run ``jobs/<JOB>.py`` on a cluster through its dashboard's Job API (``JobSubmissionClient``).

What ``raytrade submit`` does, as a library call: upload this checkout under the runtime environment of
``jobs/runtime_env.yaml`` (working_dir with excludes, plus ``py_modules`` so the cluster runs THIS code
even where an older raytrade is installed), start ``python jobs/<JOB>.py --config ... [--set ...]``,
optionally stream its logs, and report the final status.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from raytrade.errors import ConfigError, RaytradeError
from raytrade.rayauth import enable_for_client

#: The runtime environment every submitted job gets (relative to the repository root).
RUNTIME_ENV = Path("jobs/runtime_env.yaml")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def available_jobs(root: str | Path = ".") -> list[str]:
    """Names of the job scripts in ``<root>/jobs`` (``jobs/<name>.py``)."""
    return sorted(p.stem for p in (Path(root) / "jobs").glob("*.py") if not p.stem.startswith("_"))


def load_runtime_env(path: str | Path = RUNTIME_ENV) -> dict[str, Any]:
    """The runtime environment YAML as a dict (``working_dir``, ``excludes``, ``py_modules``, ``env_vars``...).

    Raises:
        ConfigError: the file is missing or is not a YAML mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"runtime environment file not found: {path} (run from the repository root)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"runtime environment {path} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def job_entrypoint(job: str, config: str | Path, overrides: list[str] | None = None,
                   data: str | None = None) -> str:
    """The shell command the cluster runs: ``python jobs/<job>.py --config <config> [--data ..] [--set ..]``."""
    words = ["python", f"jobs/{job}.py", "--config", str(config)]
    words += ["--data", data] if data else []
    for item in overrides or []:
        words += ["--set", item]
    return " ".join(shlex.quote(w) for w in words)


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    enable_for_client()  # the cluster's token, if this machine holds one, goes with every request
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RaytradeError(f"cannot reach the Ray Jobs API at {address}: {exc} "
                            f"(start a cluster with `ray start --head` or `ray up cluster.yaml`)") from None


async def _tail(client: Any, job_id: str, echo: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        echo(chunk)


def wait_for_status(client: Any, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or ``timeout_s`` passes); returns the status name."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


def submit_job(job: str, address: str, config: str | Path, overrides: list[str] | None = None, *,
               data: str | None = None, runtime_env: str | Path = RUNTIME_ENV, follow: bool = False,
               echo: Callable[[str], None] = print, timeout_s: float | None = None) -> tuple[str, str | None]:
    """Submit ``jobs/<job>.py`` to the cluster whose dashboard is at ``address`` (e.g. ``http://head:8265``).

    With ``follow`` the job's logs stream to ``echo`` until it ends and its final status is returned;
    otherwise the call returns right after submission with status ``None``. Run it from the repository root;
    ``config`` must lie inside it (the job reads it from the uploaded working dir). ``follow`` runs its own
    asyncio loop, so from a notebook submit without it and poll :func:`wait_for_status`.

    Returns:
        ``(submission id, final status or None)``; status is ``SUCCEEDED``, ``FAILED`` or ``STOPPED``.

    Raises:
        RaytradeError: unknown job, the Jobs API unreachable, or the submission refused (e.g. the upload).
        ConfigError: the config file is missing or outside this directory.
    """
    if not (Path("jobs") / f"{job}.py").is_file():
        raise RaytradeError(f"no such job: jobs/{job}.py (run from the repository root; jobs: "
                            f"{', '.join(available_jobs()) or 'none found'})")
    if not Path(config).is_file():
        raise ConfigError(f"config file not found: {config}")
    try:
        config = Path(config).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        raise ConfigError(f"--config {config}: the job reads it from the uploaded working dir, so it must lie "
                          f"inside {Path.cwd()}") from None
    env = load_runtime_env(runtime_env)
    client = _client(address)
    try:
        job_id = client.submit_job(entrypoint=job_entrypoint(job, config, overrides, data), runtime_env=env)
    except (RuntimeError, ConnectionError, ValueError) as exc:
        raise RaytradeError(f"the Ray Jobs API at {address} refused jobs/{job}.py: {exc}") from None
    echo(f"submitted {job_id}: jobs/{job}.py --config {config} to {address}\n")
    if not follow:
        echo(f"follow it with: ray job logs --address {address} --follow {job_id}\n")
        return job_id, None
    try:
        asyncio.run(_tail(client, job_id, echo))
    except KeyboardInterrupt:
        echo(f"\nstopped following; the job keeps running (ray job stop --address {address} {job_id})\n")
        raise
    status = wait_for_status(client, job_id, timeout_s=60.0 if timeout_s is None else timeout_s)
    message = (client.get_job_info(job_id).message or "").splitlines()
    reason = f" ({message[0][:300]})" if status != "SUCCEEDED" and message else ""
    echo(f"job {job_id}: {status}{reason}\n")
    return job_id, status
