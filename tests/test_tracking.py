"""raytrade.tracking against real SQLite MLflow stores: a client built for one store reads that store's registry,
whatever store the process used before (a test session or a notebook trains into several)."""

from __future__ import annotations

from pathlib import Path

from raytrade import tracking


def _register(uri: str, tmp_path: Path, name: str) -> str:
    model_dir = tmp_path / f"{name}-dir"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("0.5\n")
    with tracking.start_run(uri, "raytrade", f"{name}-run"):
        return tracking.log_model_dir(model_dir, "pathlib:Path", name, "champion")


def test_registry_client_reads_its_own_store_after_the_process_used_another(tmp_path):
    first, second = (f"sqlite:///{tmp_path / f'{n}.db'}" for n in ("first", "second"))
    assert _register(first, tmp_path, "m") == "1"
    tracking.use_tracking_uri(second)
    tracking.use_tracking_uri(first)  # the process-wide registry URI is the first store's again
    client = tracking.registry_client(second)
    assert client.search_registered_models() == []
    assert tracking.aliased_version(second, "m", "champion") is None
    assert tracking.aliased_version(first, "m", "champion") == "1"
    assert str(tracking.registry_client(first).get_model_version_by_alias("m", "champion").version) == "1"
