"""Typed configs from YAML: defaults, the embargo rule, and errors that name the field."""

from __future__ import annotations

import pytest

from conftest import REPO
from raytrade.config import PipelineConfig, load_config, parse_config
from raytrade.errors import ConfigError


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "jobs" / "configs" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.data.path.exists() or (REPO / cfg.data.path).exists()


def test_embargo_is_at_least_horizon_plus_lookback():
    cfg = parse_config({"labels": {"horizon": 6}, "model": {"lookback": 40}, "split": {"embargo": 3}})
    assert cfg.embargo == 46
    assert parse_config({"split": {"embargo": 500}}).embargo == 500


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"split": {"train": 0.8, "val": 0.15, "test": 0.15}}, "split"),
        ({"labels": {"horizon": "soon"}}, "labels.horizon"),
        ({"backtest": {"cost_bps": -1}}, "backtest.cost_bps"),
        ({"backtest": {"calendar": "nyse"}}, "backtest.calendar"),
        ({"backtest": {"periods_per_year": 0}}, "backtest.periods_per_year"),
    ],
)
def test_bad_fields_are_named(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert f": {field}" in str(err.value) or f" {field}:" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_merge_per_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 3, batch_size: 64}\n")
    cfg = load_config(path, overrides={"train": {"epochs": 1}})
    assert (cfg.train.epochs, cfg.train.batch_size) == (1, 64)
    assert isinstance(PipelineConfig().model.kernel_sizes, tuple)


def test_config_reference_is_generated_from_the_models():
    from raytrade.config_docs import config_markdown

    doc = (REPO / "docs" / "CONFIG.md").read_text()
    assert doc == config_markdown(), "docs/CONFIG.md is stale: run python -m raytrade.config_docs"
    for section in ("data", "model", "train", "tune", "rl", "ensemble", "backtest", "tracking", "serve", "ray"):
        assert f"## `{section}`" in doc


def test_set_overrides_parse_yaml_values_and_name_a_malformed_one():
    from raytrade.config import parse_overrides
    from raytrade.errors import ConfigError

    assert parse_overrides(["train.epochs=2", "rl.agents=[ppo, sac]", "output_dir=/tmp/x", "serve.enabled=false"]) \
        == {"train": {"epochs": 2}, "rl": {"agents": ["ppo", "sac"]}, "output_dir": "/tmp/x",
            "serve": {"enabled": False}}
    for bad in ("train.epochs", "=3", "train.=3"):
        with pytest.raises(ConfigError, match="SECTION.FIELD=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["rl.agents=[ppo"])


def test_using_one_mlflow_store_does_not_become_the_default_of_the_next_run(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports $MLFLOW_TRACKING_URI; a second run in the same process (a notebook, a
    test session) must still get its own output_dir's store, while a user's own variable keeps winning."""
    from raytrade import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.use_tracking_uri(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}")
    assert tracking.resolve_tracking_uri(None, tmp_path / "second") == f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/team.db")
    tracking.use_tracking_uri(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}")
    assert tracking.resolve_tracking_uri(None, tmp_path / "second") == "sqlite:////srv/team.db"
