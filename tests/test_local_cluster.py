"""A multi-node Ray cluster on this machine (raytrade.localcluster; ``make cluster-up`` / ``cluster-down``): a head
node and a worker node started as separate Ray nodes, an MLflow tracking server and Redis, with Ray's token
authentication on (the session's token, tests/conftest.py).

Checked, in order, on one cluster:

- both nodes are alive in Ray's state API with the resources that force placement, and the dashboard refuses a
  caller without the token; a probe job's task pinned to the worker node logs to the tracking server and writes Redis;
- the smoke pipeline submitted with ``raytrade submit``: its Ray Train worker, RL agent task and RLlib env runner ran
  on the worker node (state API), its models went to the tracking server's registry and artifact store, and its Serve
  app runs one replica per node, both loading their models through the tracking server;
- losing the worker node (SIGKILL of its processes) under load: only requests in flight fail, with 503; the head's
  replica answers throughout; a new worker node gets a replica back;
- losing the worker node during Ray Train: the job resumes from the last checkpoint on a new node and succeeds;
- losing the MLflow server: the replicas keep serving the models they hold (a failed reload is reported) and
  ``raytrade train`` fails with one line naming the server.

Recovery times are printed (``-s``) and quoted in the README's "Scaling out".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import BUNDLED, REPO, free_port

pytestmark = pytest.mark.slow

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
ON_WORKER = "{raytrade_worker: 0.01}"
CLIENTS = 4


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytrade.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "platform")})


def _nodes(dashboard: str) -> dict[str, str]:
    """node_id -> ``head`` / ``worker-<n>`` of the ALIVE and DEAD nodes, by the resource only that node has."""
    from ray.util.state import list_nodes

    names = {}
    for node in list_nodes(address=dashboard, limit=1000):
        own = [r for r in node.resources_total if r.startswith("raytrade_worker_")]
        names[node.node_id] = ("head" if node.is_head_node else "worker-" + own[0].rsplit("_", 1)[1] if own
                               else f"node-{node.node_id[:8]}")
    return names


def _actor_nodes(dashboard: str, class_name: str, alive: bool = False) -> list[str]:
    """The node names (head / worker-<n>) of every actor of ``class_name`` the GCS knows (also dead ones)."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name), *([("state", "=", "ALIVE")] if alive else [])]
    names = _nodes(dashboard)
    return sorted(names[a.node_id] for a in list_actors(address=dashboard, filters=filters, limit=1000, detail=True))


def _wait_job(dashboard: str, job_id: str, timeout_s: float = 900) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(job_id).value)) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(1)
    return status, client.get_job_logs(job_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    up = _cli("cluster", "up", "--workdir", str(workdir), "--worker-cpus", "2")
    assert up.returncode == 0, (up.stdout[-2000:], up.stderr[-3000:])
    info = json.loads((workdir / "cluster.json").read_text())
    yield workdir, info
    live = json.loads((workdir / "cluster.json").read_text())["pids"]  # lost nodes and servers left the record
    down = _cli("cluster", "down", "--workdir", str(workdir))
    assert down.returncode == 0, down.stderr[-2000:]
    assert sorted(down.stdout.strip().removeprefix("stopped: ").split(", ")) == sorted(live)
    for pid in {**info["pids"], **live}.values():  # every process group is gone, and Ray's temp dir
        try:  # a node add_worker_node started in this process is its child: reap it (the CLI stopped it)
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not os.path.exists(info["ray_temp_dir"]) and not (workdir / "cluster.json").exists()


def test_a_job_pins_work_to_the_worker_node_which_reaches_the_tracking_server_and_redis(cluster):
    import redis
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    workdir, info = cluster
    nodes = list_nodes(address=info["dashboard"], filters=[("state", "=", "ALIVE")])
    assert len(nodes) == 2
    (head,) = [n for n in nodes if n.is_head_node]
    (worker,) = [n for n in nodes if not n.is_head_node]
    assert head.resources_total.get("raytrade_head") == 1 and worker.resources_total.get("raytrade_worker") == 1
    assert worker.resources_total.get("raytrade_worker_1") == 1
    # Ray's token authentication is on: the Jobs API refuses a caller without the token, or with a wrong one
    assert httpx.get(f"{info['dashboard']}/api/jobs/", timeout=10).status_code == 401
    assert httpx.get(f"{info['dashboard']}/api/jobs/", headers={"Authorization": "Bearer not-the-token"},
                     timeout=10).status_code == 403
    client = JobSubmissionClient(info["dashboard"])
    job = client.submit_job(entrypoint=f"{sys.executable} -c '{PROBE}'", runtime_env={"env_vars": {
        "MLFLOW_TRACKING_URI": info["tracking_uri"], "REDIS_URL": info["redis_url"]}})
    status, logs = _wait_job(info["dashboard"], job, 300)
    assert status == "SUCCEEDED", logs[-3000:]
    node_id, run_id = json.loads(logs.rsplit("PROBE ", 1)[1].splitlines()[0])
    assert node_id == worker.node_id  # placed on the worker node by its resource
    run = MlflowClient(info["tracking_uri"]).get_run(run_id)  # logged through the server, stored in its workdir
    assert run.data.metrics["answer"] == 42.0 and (workdir / "mlflow.db").is_file()
    assert redis.Redis.from_url(info["redis_url"]).get("cluster-probe").decode() == run_id


@pytest.fixture(scope="module")
def pipeline(cluster, tmp_path_factory):
    """The smoke pipeline (PPO only) submitted to the cluster with ``raytrade submit``: Ray Train worker, agent task
    and its env runner forced onto the worker node, models registered through the tracking server, checkpoints
    under ``train.storage_path``; the Serve app (serve_configs/ensemble.cluster.yaml: 2 replicas, one per node)
    keeps running after the job."""
    workdir, info = cluster
    out = tmp_path_factory.mktemp("cluster-runs")
    port = free_port()
    started = time.monotonic()
    run = _cli("submit", "pipeline", "--address", info["dashboard"], "--config", "jobs/configs/smoke.yaml",
               "--set", f"tracking.uri={info['tracking_uri']}", "--set", f"output_dir={out / 'runs'}",
               "--set", f"train.resources_per_worker={ON_WORKER}", "--set", f"train.storage_path={out / 'shared'}",
               "--set", "rl.agents=[ppo]", "--set", "rl.num_env_runners=1",
               "--set", f"rl.resources_per_agent={ON_WORKER}", "--set", f"rl.resources_per_env_runner={ON_WORKER}",
               "--set", "serve.config=serve_configs/ensemble.cluster.yaml", "--set", "serve.proxy_location=HeadOnly",
               "--set", f"serve.port={port}", "--set", "serve.shutdown=false", "--follow", timeout=1500)
    if run.returncode != 0:
        print(run.stdout[-8000:], run.stderr[-2000:])
    assert run.returncode == 0 and "SUCCEEDED" in run.stdout
    print(f"\n[cluster] smoke pipeline job: {time.monotonic() - started:.0f} s")
    report_path = run.stdout.rsplit("report: ", 1)[1].split(";", 1)[0].strip()
    report = json.loads(Path(report_path).read_text())
    bars = pd.read_parquet(BUNDLED)
    from raytrade.config import load_config
    from raytrade.features.technical import warmup_bars
    from raytrade.pipeline import request_payload

    cfg = load_config(REPO / "jobs/configs/smoke.yaml")
    n_bars = warmup_bars(cfg.features) + cfg.model.lookback + 16
    body = request_payload(bars, bars["timestamp"].iloc[-1], n_bars)
    return {"url": f"http://127.0.0.1:{port}", "report": report, "out": out, "body": body}


def test_the_pipeline_ran_on_the_worker_node_and_serves_through_the_tracking_server(cluster, pipeline):
    from ray.util.state import list_tasks

    from raytrade import tracking

    workdir, info = cluster
    dash = info["dashboard"]
    # placement, from Ray's state API: every Train worker, the agent's task and its env runner on the worker node
    assert _actor_nodes(dash, "RayTrainWorker") == ["worker-1"]
    assert set(_actor_nodes(dash, "SingleAgentEnvRunner")) == {"worker-1"}
    names = _nodes(dash)
    agent_tasks = list_tasks(address=dash, filters=[("name", "=", "agent-ppo")], limit=100, detail=True)
    assert agent_tasks and {names[t.node_id] for t in agent_tasks if t.node_id} == {"worker-1"}
    # checkpoints went to train.storage_path (shared storage), not to the run directory
    assert list((pipeline["out"] / "shared").rglob("epoch_*"))
    assert not (Path(pipeline["report"]["run_dir"]) / "ray_train").exists()
    # models registered through the tracking server: registry in its database, artifacts in its artifact store; one
    # version each, from this pipeline's runs (registry_client: this session's earlier tests set MLflow's
    # process-wide registry URI to their own SQLite stores, which MlflowClient(uri) alone would read)
    client = tracking.registry_client(info["tracking_uri"])
    report = pipeline["report"]
    for key, model in (("forecaster", "raytrade-forecaster"), ("ppo", "raytrade-agent-ppo")):
        versions = [(str(v.version), v.run_id) for v in client.search_model_versions(f"name='{model}'")]
        assert versions == [(str(report["model_versions"][key]), report["mlflow_run_ids"][key])]
        assert str(client.get_model_version_by_alias(model, "champion").version) == versions[0][0]
    assert pipeline["report"]["mlflow"]["tracking_uri"] == info["tracking_uri"]
    assert list((workdir / "mlartifacts").rglob("*.pt"))
    # Serve: 2 replicas, one per node, each answering with models it loaded from the tracking server
    assert _actor_nodes(dash, "ServeReplica:raytrade:Decision", alive=True) == ["head", "worker-1"]
    seen = {}
    with httpx.Client(base_url=pipeline["url"], timeout=30) as c:
        for _ in range(40):
            models = c.get("/models").json()
            seen[models["ensemble"]["replica"]] = models
            if len(seen) == 2:
                break
        assert c.post("/predict", json=pipeline["body"]).status_code == 200
    assert len(seen) == 2
    for models in seen.values():
        assert models["forecaster"]["tracking_uri"] == info["tracking_uri"]
        assert models["agents"]["ppo"]["tracking_uri"] == info["tracking_uri"]
        assert models["forecaster"]["version"] == str(report["model_versions"]["forecaster"])
        assert models["forecaster"]["reload_error"] is None


def _load(url: str, body: dict, stop: threading.Event, t0: float, answered: list[list[float]],
          failed: list[tuple[float, object]], k: int) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            try:
                code: object = client.post("/predict", json={**body, "symbol": f"NODE{k}"}).status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            (answered[k].append(time.monotonic() - t0) if code == 200
             else failed.append((time.monotonic() - t0, code)))


def test_losing_a_serve_replicas_node_under_load_fails_only_requests_in_flight(cluster, pipeline):
    """4 closed-loop clients; the worker node (one of the two replicas) is killed with SIGKILL. Only requests in
    flight on its replica fail, with 503; the head's replica answers throughout; a new worker node gets the
    second replica back."""
    from raytrade.localcluster import add_worker_node, stop_local_cluster

    workdir, info = cluster
    answered: list[list[float]] = [[] for _ in range(CLIENTS)]
    failed: list[tuple[float, object]] = []
    stop, t0 = threading.Event(), time.monotonic()
    threads = [threading.Thread(target=_load, args=(pipeline["url"], pipeline["body"], stop, t0, answered, failed, k))
               for k in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(4.0)
        killed_at = time.monotonic() - t0
        stop_local_cluster(workdir, only="worker-1", hard=True)
        time.sleep(8.0)
        added = add_worker_node(workdir)
        node_back = time.monotonic() - t0
        deadline = time.monotonic() + 120
        while _actor_nodes(info["dashboard"], "ServeReplica:raytrade:Decision", alive=True) != ["head", added]:
            assert time.monotonic() < deadline, "no second replica on the new worker node"
            time.sleep(0.5)
        replica_back = time.monotonic() - t0
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    times = sorted(x for a in answered for x in a)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > killed_at - 1]
    print(f"\n[cluster] serve node loss: {len(failed)} failed {sorted({str(c) for _, c in failed})}, longest wait "
          f"between answers {max(gaps):.2f} s, node back {node_back - killed_at:.1f} s (8 s wait + start), "
          f"replica back {replica_back - killed_at:.1f} s after the kill; {len(times)} answers")
    assert all(code == 503 for _, code in failed), failed  # a lost replica is "retry", never a 500
    assert len(failed) <= CLIENTS, failed  # at most the requests in flight
    assert max(gaps) < 5.0  # the head's replica kept answering while the worker node was gone
    for k, ts in enumerate(answered):
        assert any(killed_at < x < killed_at + 8 for x in ts), k  # every client was answered during the outage


def _registered_epochs(storage: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train's controller has registered under ``storage`` (its checkpoint manager
    writes ``checkpoint_manager_snapshot.json`` on every registration); [] before the first, or mid-write."""
    epochs = []
    for snapshot in storage.rglob("checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):
            continue
        epochs += [int(r["metrics"]["epoch"]) for r in results]
    return epochs


def test_losing_the_worker_node_during_training_resumes_from_the_last_checkpoint(cluster, tmp_path):
    """``raytrade submit train_forecaster`` with the Train worker on a worker node; once Ray Train's controller has
    registered a checkpoint (one merely written to ``train.storage_path`` but not yet polled is unknown to a
    restart, which then begins at epoch 0) the node is killed (SIGKILL) and a new one started. Ray Train
    (``FailureConfig(max_failures)``) restarts the worker group on the new node from that checkpoint; the job
    succeeds and its history shows the resumed epochs."""
    from raytrade.localcluster import add_worker_node, load_local_cluster, stop_local_cluster

    workdir, info = cluster
    shared = tmp_path / "shared"
    out = _cli("submit", "train_forecaster", "--address", info["dashboard"], "--config", "jobs/configs/smoke.yaml",
               "--set", f"tracking.uri={info['tracking_uri']}", "--set", f"output_dir={tmp_path / 'runs'}",
               "--set", f"train.resources_per_worker={ON_WORKER}", "--set", f"train.storage_path={shared}",
               "--set", "train.epochs=8", "--set", "train.early_stopping_patience=null")
    assert out.returncode == 0, out.stderr[-2000:]
    job_id = out.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    deadline = time.monotonic() + 600
    while not (registered := _registered_epochs(shared)):
        assert time.monotonic() < deadline, "no checkpoint was registered"
        time.sleep(0.2)
    (victim,) = [n for n in load_local_cluster(workdir).pids if n.startswith("worker-")]
    killed, killed_wall = time.monotonic(), time.time()
    stop_local_cluster(workdir, only=victim, hard=True)
    before = {p.name for p in shared.rglob("epoch_*")}
    add_worker_node(workdir)
    node_back = time.monotonic() - killed
    status, logs = _wait_job(info["dashboard"], job_id, 900)
    assert status == "SUCCEEDED", logs[-4000:]
    report = json.loads(Path(logs.rsplit("report: ", 1)[1].split()[0]).read_text())
    epochs = pd.DataFrame(report["forecaster_metrics"]["epochs"])
    resumed = epochs[epochs["resumed_from_epoch"] > 0]
    assert len(resumed), epochs  # the restarted worker group started from a checkpoint, not from epoch 0
    first = int(resumed["resumed_from_epoch"].iloc[0])
    assert first >= max(registered)  # from the newest checkpoint the controller knew at the kill, or a later one
    assert int(resumed["epoch"].iloc[0]) == first + 1 and epochs["epoch"].max() == 8
    after = sorted((p for p in shared.rglob("epoch_*") if p.name not in before), key=lambda p: p.stat().st_mtime)
    assert after
    print(f"\n[cluster] training node loss: killed with epochs {registered} registered; resumed from epoch {first}; "
          f"new node alive {node_back:.1f} s after the kill; next checkpoint "
          f"{after[0].stat().st_mtime - killed_wall:.1f} s after the kill")


def test_with_the_tracking_server_lost_serving_keeps_its_models_and_training_fails_in_one_line(cluster, pipeline,
                                                                                              tmp_path):
    """A lost MLflow server: the replicas keep answering with the versions they loaded (a failed background
    reload is reported in /models), and ``raytrade train`` pointed at the server exits 1 with one line naming it,
    before Ray Train starts (not after MLflow's own retries); nothing is registered anywhere else."""
    from raytrade.localcluster import stop_local_cluster

    workdir, info = cluster
    assert stop_local_cluster(workdir, only="mlflow", hard=True) == ["mlflow"]
    errors: list[str] = []
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=pipeline["url"], timeout=60) as c:
        while not errors:
            assert time.monotonic() < deadline, "no replica reported a failed reload"
            assert c.post("/predict", json=pipeline["body"]).status_code == 200  # still serving
            models = c.get("/models").json()
            assert models["forecaster"]["version"] == str(pipeline["report"]["model_versions"]["forecaster"])
            errors = [m["reload_error"] for m in (models["forecaster"], *models["agents"].values())
                      if m["reload_error"]]
            time.sleep(0.5)
    assert "127.0.0.1" in errors[0] or "onnect" in errors[0], errors
    print(f"\n[cluster] MLflow server lost: every request answered; a replica reported the failed reload "
          f"{90 - (deadline - time.monotonic()):.1f} s after the kill (reload_interval_s 10)")
    out = _cli("train", "--config", "jobs/configs/smoke.yaml", "--set", f"tracking.uri={info['tracking_uri']}",
               "--set", f"output_dir={tmp_path / 'runs'}")
    assert out.returncode == 1, (out.stdout[-2000:], out.stderr[-2000:])
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]  # progress lines go to stderr too
    assert line.startswith(f"error: the MLflow tracking server at {info['tracking_uri']} does not answer"), line
    assert out.stderr.rstrip().endswith(line) and "Traceback" not in out.stderr
    assert "Ray Train:" not in out.stderr and not list((tmp_path / "runs").rglob("mlflow.db"))


def test_a_second_up_on_a_running_cluster_is_refused_in_one_line(cluster, tmp_path):
    workdir, info = cluster
    again = _cli("cluster", "up", "--workdir", str(workdir))
    assert again.returncode == 1 and again.stderr.startswith("error: cluster up:") and "already" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    missing = _cli("cluster", "down", "--workdir", str(tmp_path))
    assert missing.returncode == 1 and "no cluster.json" in missing.stderr
