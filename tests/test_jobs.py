"""Ray Jobs: the job scripts' command line, `raytrade submit` and a real submission to a local head node.

The integration test starts its own head node (`ray start --head --block`, stopped with SIGTERM, which
stops only that node's processes), submits the smoke pipeline through `raytrade submit --follow`
(JobSubmissionClient), and checks the job SUCCEEDED and that its MLflow runs exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port, shared
from raytrade.rayauth import auth_headers

BIN = Path(sys.executable).parent
STAGES = ("ingest", "features", "train_forecaster", "tune_forecaster", "train_agents", "backtest", "deploy",
          "pipeline")


def _env(**extra: str) -> dict[str, str]:
    # the job's `python` is whatever the node's PATH finds first: this venv's, as for a user with it active
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_ADDRESS": "", **extra}


def _raytrade(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "raytrade"), *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_every_stage_has_a_job_with_config_and_help():
    from raytrade.submission import available_jobs

    jobs = available_jobs(REPO)
    assert set(STAGES) <= set(jobs)
    procs = {stage: subprocess.Popen([sys.executable, f"jobs/{stage}.py", "--help"], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE) for stage in jobs}
    for stage, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, (stage, stderr)
        assert "--config" in stdout and "--set" in stdout and f"jobs/{stage}.py" in stdout, stage


def test_a_job_with_a_bad_config_prints_one_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0}\n")
    out = subprocess.run([sys.executable, "jobs/train_forecaster.py", "--config", str(bad)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"error: invalid config {bad}: train.epochs: Input should be "
                                               "greater than 0"]
    out = subprocess.run([sys.executable, "jobs/train_forecaster.py", "--config", "jobs/configs/smoke.yaml",
                          "--set", "train.epochs"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and "expected SECTION.FIELD=VALUE" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_features_job_writes_causal_features_of_the_bundled_bars(tmp_path):
    out = subprocess.run([sys.executable, "jobs/features.py", "--config", "jobs/configs/smoke.yaml",
                          "--output", str(tmp_path), "--set", "data.max_bars=600", "--set", "ray.num_cpus=1"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import pandas as pd

    table = pd.read_parquet(tmp_path / "features.parquet")
    assert list(table.columns[:2]) == ["timestamp", "symbol"] and any(c.startswith("label_") for c in table)
    assert table["timestamp"].is_monotonic_increasing and len(table) < 600


def test_submit_names_an_unknown_job_and_an_unreachable_cluster_in_one_line():
    out = _raytrade("submit", "no_such_job", "--address", "http://127.0.0.1:9")
    assert out.returncode == 1 and out.stderr.startswith("error: no such job: jobs/no_such_job.py")
    assert "pipeline" in out.stderr and "Traceback" not in out.stderr
    out = _raytrade("submit", "pipeline", "--address", f"http://127.0.0.1:{free_port()}",
                    "--config", "jobs/configs/smoke.yaml", timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("error: cannot reach the Ray Jobs API at")
    assert len(out.stderr.strip().splitlines()) == 1


def test_submit_builds_a_quoted_entrypoint_and_the_runtime_env_uploads_this_checkout():
    from raytrade.submission import job_entrypoint, load_runtime_env

    cmd = job_entrypoint("pipeline", "jobs/configs/smoke.yaml", ["output_dir=/tmp/a b", "train.epochs=1"])
    assert cmd == ("python jobs/pipeline.py --config jobs/configs/smoke.yaml --set 'output_dir=/tmp/a b' "
                   "--set train.epochs=1")
    env = load_runtime_env(REPO / "jobs" / "runtime_env.yaml")
    assert env["working_dir"] == "." and {".venv", "runs", ".git"} <= set(env["excludes"])
    for module in env["py_modules"]:
        assert (REPO / module / "__init__.py").is_file()


def _wait_for_the_job_agent(address: str, deadline: float, proc: subprocess.Popen) -> None:
    """Until the head's job server can reach its node's job agent: the dashboard answers before the agent has
    registered, and a submission in between gets Ray's "No available agent to submit job, please try again later"
    (after 10 s; a loaded 2-core machine takes longer). A trivial job is the readiness probe."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"ray start --head: the job server never reached its agent: {exc}")
            time.sleep(2)
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            pytest.fail("ray start --head: the readiness job did not finish")
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local head node of its own (ports and temp dir), as `ray start --head` on a cluster's head."""
    temp = tmp_path_factory.mktemp("rayhead")
    dashboard = free_port()
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", f"--dashboard-port={dashboard}",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}",
         # every port of its own: the session's ray_local node already holds Ray's defaults (the dashboard agent's
         # 52365 among them), and a head whose agent cannot bind never accepts a job ("No available agent")
         *(f"--{name}={free_port()}" for name in (
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port"))],
        env=_env(RAY_USAGE_STATS_ENABLED="0"), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{address}/api/version", headers=auth_headers(), timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ray start --head did not come up (exit {proc.poll()})")
        time.sleep(1)
    _wait_for_the_job_agent(address, deadline + 120, proc)
    # Ray's token authentication is on (tests/conftest.py): the Jobs API refuses a caller without the token
    assert httpx.get(f"{address}/api/jobs/", timeout=5).status_code == 401
    assert httpx.get(f"{address}/api/jobs/", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 403
    yield address
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_submitted_smoke_pipeline_succeeds_and_its_mlflow_runs_exist(ray_head, tmp_path):
    out_dir = tmp_path / "runs"
    out = _raytrade("submit", "pipeline", "--address", ray_head, "--config", "jobs/configs/smoke.yaml",
                    "--set", f"output_dir={out_dir}", "--set", f"serve.port={free_port()}", "--follow")
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-2000:])
    submission = out.stdout.splitlines()[0].split()[1].rstrip(":")
    assert out.stdout.rstrip().endswith(f"job {submission}: SUCCEEDED")
    assert "[6/6] Writing report" in out.stdout  # the job's own log lines were streamed

    from ray.job_submission import JobSubmissionClient

    assert str(JobSubmissionClient(ray_head).get_job_status(submission).value) == "SUCCEEDED"
    (report_path,) = out_dir.glob("smoke-*/report.json")
    report = json.loads(report_path.read_text())
    assert (report_path.parent / "report.html").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(report["mlflow"]["tracking_uri"])
    for stage, run_id in report["mlflow_run_ids"].items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", stage
    forecaster = client.get_run(report["mlflow_run_ids"]["forecaster"])
    assert forecaster.data.metrics["test_accuracy"] == pytest.approx(report["forecaster_metrics"]["test"]["accuracy"])


@pytest.mark.slow
def test_submitted_finrl_protocol_runs_with_data_on_the_cluster_path(ray_head, tmp_path):
    """`raytrade submit finrl_protocol`: the data path is the cluster's (here the same machine's absolute path),
    the seeds come through --set; the job writes its report and its metrics hash."""
    out = _raytrade("submit", "finrl_protocol", "--address", ray_head, "--config",
                    "jobs/configs/finrl_dow30_smoke.yaml", "--data", str(shared("stooq_dow30_1d.parquet")),
                    "--set", f"output_dir={tmp_path / 'runs'}", "--set", "finrl.seeds=1", "--follow")
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-2000:])
    assert out.stdout.rstrip().endswith("SUCCEEDED") and "metrics sha256: " in out.stdout
    (report_path,) = (tmp_path / "runs").glob("finrl-smoke-finrl-*/finrl_protocol.json")
    report = json.loads(report_path.read_text())
    assert report["seeds"] == [0] and "| ensemble |" in report["table_markdown"]


@pytest.mark.slow
def test_a_failing_job_makes_submit_exit_non_zero(ray_head):
    out = _raytrade("submit", "train_forecaster", "--address", ray_head, "--config", "jobs/configs/smoke.yaml",
                    "--set", "train.epochs=0", "--follow", timeout=300)
    assert out.returncode == 1
    assert "error: invalid config jobs/configs/smoke.yaml: train.epochs" in out.stdout  # the job's own line
    assert ": FAILED (" in out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_plain_ray_job_submit_with_the_working_dir_runs_a_job(ray_head, tmp_path):
    """The README's plain `ray job submit --working-dir .` (no runtime env file; .gitignore keeps .venv and
    runs/ out of the upload) runs a job script that imports the package and uses Ray Data."""
    out = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", ".", "--",
         "python", "jobs/features.py", "--config", "jobs/configs/smoke.yaml", "--set", "data.max_bars=600",
         "--output", str(tmp_path)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "succeeded" in out.stdout + out.stderr and (tmp_path / "features.parquet").is_file()
