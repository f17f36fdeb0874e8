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
