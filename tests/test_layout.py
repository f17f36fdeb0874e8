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


def test_cluster_yaml_matches_the_ray_autoscaler_schema():
    import json

    import jsonschema
    import ray.autoscaler
    import yaml

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and "cpu_worker" in types


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
