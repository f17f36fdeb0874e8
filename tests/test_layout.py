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
