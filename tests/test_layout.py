"""The repository layout the architecture requires."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO


def test_platform_is_a_source_root_not_a_package():
    assert (REPO / "platform" / "raytrade" / "__init__.py").is_file()
    assert not (REPO / "platform" / "__init__.py").exists()
    assert not (REPO / "envs" / "__init__.py").exists()


def test_stdlib_platform_is_not_shadowed():
    import platform

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert isinstance(platform.python_version(), str)


def test_top_level_entries_exist():
    for entry in ("pyproject.toml", "cluster.yaml", "platform", "envs", "jobs", "serve_configs", "tests",
                  "notebooks", "data", "README.md", "Makefile", ".ci/run", "benchmarks"):
        assert (REPO / entry).exists(), entry


def test_no_module_named_after_stdlib_or_ray_modules():
    banned = {"logging", "types", "platform", "train", "serve", "tune", "data_parallel"} | set(sys.stdlib_module_names)
    allowed = {"__init__", "__main__"}
    for root in (REPO / "platform" / "raytrade", REPO / "envs" / "raytrade_envs"):
        for path in root.rglob("*.py"):
            assert path.stem in allowed or path.stem not in banned, path


def test_import_has_no_heavy_side_effects():
    code = ("import sys, raytrade, raytrade.config, raytrade.data, raytrade.errors; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cluster_yaml_passes_rays_own_launcher_validation():
    """What `ray up` does before it touches a cloud: merge the provider defaults, validate (schema + rules)."""
    import copy

    import ray
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and types["cpu_worker"]["resources"]["CPU"] >= 1
    assert types[prepared["head_node_type"]]["resources"]["CPU"] == 0  # no training on the head
    for name in ("gpu_worker", "cpu_worker"):
        assert types[name]["max_workers"] > types[name]["min_workers"] >= 0  # autoscaling range
    # the image is pinned to the Ray this project runs (pyproject: ray==<version>), CUDA variant on GPU workers
    images = [prepared["docker"]["image"], types["gpu_worker"]["docker"]["worker_image"]]
    assert all(image.startswith(f"rayproject/ray:{ray.__version__}-py311") for image in images)
    assert images[1].endswith("-gpu")
    # every node installs this checkout, mounted from the local directory; GPU workers with the CUDA torch
    mount = next(remote for remote, local in prepared["file_mounts"].items() if local == ".")
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"],
                     types["gpu_worker"]["worker_setup_commands"]):
        assert f"pip install -q -e {mount}" in " ".join(commands) and "torch==2.13.0" in " ".join(commands)
    assert "download.pytorch.org/whl/cu" in " ".join(types["gpu_worker"]["worker_setup_commands"])
    # Ray's token authentication on every node, with the token copied from the user's machine (never from git)
    commands = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts)
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_job_configs_load():
    from raytrade.config import load_config

    for path in (REPO / "jobs" / "configs").glob("*.yaml"):
        load_config(path)


def test_notebooks_are_valid_and_outputs_stripped():
    import json

    for path in (REPO / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert nb["nbformat"] == 4
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path
                compile("".join(cell["source"]), str(path), "exec")


# --- the dependency direction of ../shared/design/ARCHITECTURE.md, read from the code's imports --------------------

# Lower layers first; a module may import its own package and anything in a LOWER layer, nothing else. Packages in
# one layer are siblings and may not import each other. (raytrade_envs <- data <- features <- dataset <- models,
# store <- evaluation <- training, rl <- serving <- stages <- pipeline <- cli; errors/config/tracking/runtime are the
# foundation every room may use.)
LAYERS: list[set[str]] = [
    {"raytrade_envs"},
    {"raytrade"},  # the package __init__ (a docstring and __version__)
    {"raytrade.errors"},
    {"raytrade.config"},
    {"raytrade.rayauth"},
    {"raytrade.tracking", "raytrade.runtime", "raytrade.submission", "raytrade.localcluster"},
    {"raytrade.data"},
    {"raytrade.features"},
    {"raytrade.dataset"},
    {"raytrade.models", "raytrade.store"},
    {"raytrade.evaluation"},
    {"raytrade.training", "raytrade.rl"},
    {"raytrade.serving"},
    {"raytrade.stages"},
    {"raytrade.pipeline"},
    {"raytrade.cli", "raytrade.config_docs"},
]
# training code a Serve replica must never load (the inference Policy and env inputs are fine)
TRAINING_CODE = ("raytrade.training", "raytrade.rl.agents", "raytrade.rl.rllib_agents", "raytrade.rl.sb3_agents",
                 "raytrade.rl.td3", "raytrade.rl.strategies")


def _modules() -> dict[str, Path]:
    mods = {}
    for root in (REPO / "platform", REPO / "envs"):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (function-level imports included)."""
    import ast

    mods = _modules()

    def owner(name: str) -> str | None:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in mods else None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            targets |= {t for t in map(owner, names) if t is not None and t != mod}
        graph[mod] = targets
    return graph


def _package(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if parts[0] == "raytrade" and len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read_from_the_code():
    """Guards the checks below against reading nothing: known edges must be in the graph."""
    graph = _import_graph()
    assert "raytrade.data.schema" in graph["raytrade.data.validation"]
    assert "raytrade.training.loop" in graph["raytrade.training.trainer"]
    assert "raytrade_envs" in graph["raytrade.rl.policy"]  # `from raytrade_envs import ...`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_between_modules():
    assert _cycles(_import_graph()) == []


def test_no_import_circle_between_packages():
    packages: dict[str, set[str]] = {}
    for mod, targets in _import_graph().items():
        packages.setdefault(_package(mod), set()).update(_package(t) for t in targets if _package(t) != _package(mod))
    assert _cycles(packages) == []


def test_dependencies_run_one_way():
    layer = {package: i for i, members in enumerate(LAYERS) for package in members}
    graph = _import_graph()
    unplaced = sorted({_package(m) for m in graph} - set(layer))
    assert unplaced == [], f"place these in LAYERS (and in ARCHITECTURE.md): {unplaced}"
    wrong = [f"{mod} -> {target}" for mod, targets in sorted(graph.items()) for target in sorted(targets)
             if _package(target) != _package(mod) and layer[_package(target)] >= layer[_package(mod)]]
    assert wrong == []


def test_serving_never_loads_training_code():
    graph = _import_graph()
    seen, todo = set(), [m for m in graph if m.startswith("raytrade.serving")]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(graph[mod])
    assert sorted(m for m in seen if m.startswith(TRAINING_CODE)) == []


def test_stages_import_no_other_stage_but_the_helpers():
    graph = _import_graph()
    wrong = [f"{mod} -> {target}" for mod, targets in sorted(graph.items()) if mod.startswith("raytrade.stages.")
             for target in sorted(targets)
             if target.startswith("raytrade.stages.") and target != "raytrade.stages.common"]
    assert wrong == []
