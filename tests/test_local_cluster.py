"""A multi-node Ray cluster on this machine (raytrade.localcluster; ``make cluster-up`` / ``cluster-down``): a head
node and a worker node started as separate Ray nodes, an MLflow tracking server and Redis.

Checked: both nodes are alive in Ray's state API with the resources that force placement; a Ray job submitted
through the head's Jobs API runs a task pinned to the worker node, which logs an MLflow run through the tracking
server (not a local file path) and writes to Redis; with the tracking server stopped, training fails with one line
naming it; ``raytrade cluster down`` stops every process. Ray's token
authentication is still off here, as in the rest of the suite (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

PROBE = """
import json, mlflow, os, ray, redis
ray.init()
@ray.remote(resources={"raytrade_worker": 0.01})
def on_worker():
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("cluster-probe")
    with mlflow.start_run() as run:
        mlflow.log_metric("answer", 42.0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).set("cluster-probe", run.info.run_id)
    return ray.get_runtime_context().get_node_id(), run.info.run_id
print("PROBE " + json.dumps(ray.get(on_worker.remote())))
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytrade.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "platform")})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    up = _cli("cluster", "up", "--workdir", str(workdir))
    assert up.returncode == 0, (up.stdout[-2000:], up.stderr[-3000:])
    info = json.loads((workdir / "cluster.json").read_text())
    yield workdir, info
    down = _cli("cluster", "down", "--workdir", str(workdir))
    assert down.returncode == 0, down.stderr[-2000:]
    assert down.stdout.strip() == "stopped: worker-1, head, mlflow, redis"
    for pid in info["pids"].values():  # every process group is gone, and Ray's temp dir
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not os.path.exists(info["ray_temp_dir"]) and not (workdir / "cluster.json").exists()


@pytest.mark.slow
def test_a_job_pins_work_to_the_worker_node_which_reaches_the_tracking_server_and_redis(cluster):
    import redis
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_nodes

    workdir, info = cluster
    nodes = list_nodes(address=info["dashboard"], filters=[("state", "=", "ALIVE")])
    assert len(nodes) == 2
    (head,) = [n for n in nodes if n.is_head_node]
    (worker,) = [n for n in nodes if not n.is_head_node]
    assert head.resources_total.get("raytrade_head") == 1 and worker.resources_total.get("raytrade_worker") == 1
    client = JobSubmissionClient(info["dashboard"])
    job = client.submit_job(entrypoint=f"{sys.executable} -c '{PROBE}'", runtime_env={"env_vars": {
        "MLFLOW_TRACKING_URI": info["tracking_uri"], "REDIS_URL": info["redis_url"]}})
    deadline = time.monotonic() + 300
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "the probe job did not finish"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    node_id, run_id = json.loads(logs.rsplit("PROBE ", 1)[1].splitlines()[0])
    assert node_id == worker.node_id  # placed on the worker node by its resource
    run = MlflowClient(info["tracking_uri"]).get_run(run_id)  # logged through the server, stored in its workdir
    assert run.data.metrics["answer"] == 42.0 and (workdir / "mlflow.db").is_file()
    assert redis.Redis.from_url(info["redis_url"]).get("cluster-probe").decode() == run_id


@pytest.mark.slow
def test_with_the_tracking_server_stopped_training_fails_in_one_line_naming_it(cluster, tmp_path):
    """A lost MLflow server: ``raytrade train`` pointed at it exits 1 with one line naming the server, before Ray
    Train starts (not after MLflow's own retries), and nothing is registered anywhere else."""
    from raytrade.localcluster import stop_local_cluster

    workdir, info = cluster
    assert stop_local_cluster(workdir, only="mlflow") == ["mlflow"]
    out = _cli("train", "--config", "jobs/configs/smoke.yaml", "--set", f"tracking.uri={info['tracking_uri']}",
               "--set", f"output_dir={tmp_path / 'runs'}")
    assert out.returncode == 1, (out.stdout[-2000:], out.stderr[-2000:])
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]  # progress lines go to stderr too
    assert line.startswith(f"error: the MLflow tracking server at {info['tracking_uri']} does not answer"), line
    assert out.stderr.rstrip().endswith(line) and "Traceback" not in out.stderr
    assert "Ray Train:" not in out.stderr and not list((tmp_path / "runs").rglob("mlflow.db"))


@pytest.mark.slow
def test_a_second_up_on_a_running_cluster_is_refused_in_one_line(cluster, tmp_path):
    workdir, info = cluster
    again = _cli("cluster", "up", "--workdir", str(workdir))
    assert again.returncode == 1 and again.stderr.startswith("error: cluster up:") and "already" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    missing = _cli("cluster", "down", "--workdir", str(tmp_path))
    assert missing.returncode == 1 and "no cluster.json" in missing.stderr
