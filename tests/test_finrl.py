"""The FinRL ensemble protocol (raytrade.stages.finrl, jobs/finrl_protocol.py): its windows, and the smoke config
run end to end on real Dow data: byte-identical metrics for the same seeds, the report's contract, MLflow, and no
look-ahead (changing later bars leaves every earlier window's choice unchanged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, shared
from raytrade.errors import ConfigError, InsufficientDataError
from raytrade.stages.finrl import protocol_windows, summary_table

SMOKE = "jobs/configs/finrl_dow30_smoke.yaml"
PERTURB_FROM = "2017-08-01"


def _days(start: str, n: int) -> pd.DatetimeIndex:
    return pd.bdate_range(start, periods=n, tz="UTC")


def test_windows_are_contiguous_and_each_validates_on_the_bars_just_before_it():
    stamps = _days("2015-01-01", 400)
    wins = protocol_windows(stamps, "2015-09-01", 50, first_row=10, min_train_bars=40)
    assert stamps[wins[0].trade_start] == pd.Timestamp("2015-09-01", tz="UTC")
    for prev, win in zip(wins, wins[1:], strict=False):
        assert win.trade_start == prev.trade_stop  # one trading period, no gap, no overlap
    for win in wins:
        assert win.val_start == win.trade_start - 50  # validated on the window just before it
        assert win.k == wins.index(win)
    assert wins[-1].trade_stop == len(stamps) - 1  # the last bar has no next bar to trade
    assert all(w.trade_stop - w.trade_start == 50 for w in wins[:-1])
    record = wins[0].to_dict(stamps)
    assert record["train_end"] < record["val_start"] <= record["val_end"] < record["trade_start"]


def test_windows_refuse_a_start_without_data_or_training_bars_and_a_bad_date():
    stamps = _days("2015-01-01", 300)
    with pytest.raises(InsufficientDataError, match="no bar on or after it"):
        protocol_windows(stamps, "2020-01-01", 50, first_row=0, min_train_bars=10)
    with pytest.raises(InsufficientDataError, match="training bars before the first validation window"):
        protocol_windows(stamps, "2015-04-01", 50, first_row=0, min_train_bars=100)
    with pytest.raises(ConfigError, match="finrl.trade_start"):
        protocol_windows(stamps, "not a date", 50, first_row=0, min_train_bars=10)


def test_summary_table_has_table_two_columns_and_the_interval():
    stats = {"mean": 0.1, "std": 0.02}
    row = {"metrics": {k: stats for k in ("total_return", "annual_return", "annual_volatility", "sharpe",
                                          "max_drawdown", "sortino", "calmar")}, "sharpe_ci95": [-0.5, 1.5]}
    table = summary_table({"ensemble": row}, n_seeds=3)
    header, _, line = table.splitlines()
    for column in ("cumulative return", "annual return", "annual volatility", "Sharpe", "Sharpe 95% CI",
                   "max drawdown", "Sortino", "Calmar"):
        assert column in header
    assert "| ensemble | 10.0% ± 2.0 |" in line and "[-0.50, 1.50]" in line and "-10.0% ± 2.0" in line


def _job(out: Path, *extra: str) -> dict:
    run = subprocess.run([sys.executable, "jobs/finrl_protocol.py", "--config", SMOKE, "--set",
                          f"output_dir={out}", *extra], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    path = run.stdout.rsplit("report: ", 1)[1].strip()
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def finrl_runs(tmp_path_factory):
    """The smoke protocol twice with 2 seeds, then once (seed 0) on the same bars with every price from
    PERTURB_FROM on multiplied by a random walk (OHLC relations kept)."""
    tmp = tmp_path_factory.mktemp("finrl")
    bars = pd.read_parquet(shared("stooq_dow30_1d.parquet"))
    rng = np.random.default_rng(7)
    later = bars["timestamp"] >= pd.Timestamp(PERTURB_FROM, tz="UTC")
    factor = np.ones(len(bars))
    for symbol in bars["symbol"].unique():
        rows = np.flatnonzero(later & (bars["symbol"] == symbol))
        factor[rows] = np.exp(np.cumsum(rng.normal(0.0, 0.02, len(rows))))
    changed = bars.copy()
    for col in ("open", "high", "low", "close"):
        changed[col] = bars[col] * factor
    data = tmp / "dow30_changed_later.parquet"
    changed.to_parquet(data)
    first = _job(tmp / "a", "--seeds", "2")
    second = _job(tmp / "b", "--seeds", "2")
    perturbed = _job(tmp / "c", "--data", str(data))
    return first, second, perturbed


@pytest.mark.slow
def test_the_same_seeds_give_byte_identical_metrics(finrl_runs):
    first, second, _ = finrl_runs
    assert first["metrics_sha256"] == second["metrics_sha256"]
    a = (Path(first["run_dir"]) / "metrics.json").read_bytes()
    assert a == (Path(second["run_dir"]) / "metrics.json").read_bytes()
    assert first["run_dir"] != second["run_dir"]


@pytest.mark.slow
def test_the_report_has_every_window_member_strategy_and_the_mlflow_run(finrl_runs):
    report, _, _ = finrl_runs
    agents = ["ppo", "sb3_a2c"]
    assert report["seeds"] == [0, 1]
    assert len(report["windows"]) >= 3
    for seed in ("0", "1"):
        for record in report["choices"][seed]:
            assert set(record["val_sharpe"]) == set(agents)
            best = max(record["val_sharpe"].values())
            assert record["val_sharpe"][record["chosen"]] == best
    strategies = ["ensemble", "agent:ppo", "agent:sb3_a2c", "buy_and_hold", "min_variance"]
    assert list(report["summary"]) == strategies
    for name in strategies:
        row = report["summary"][name]
        assert row["n_seeds"] == (1 if name in ("buy_and_hold", "min_variance") else 2)
        low, high = row["sharpe_ci95"]
        assert low < high
        for key in ("total_return", "annual_return", "annual_volatility", "sharpe", "max_drawdown", "sortino",
                    "calmar"):
            assert np.isfinite(row["metrics"][key]["mean"]), (name, key)
    seeds = [report["per_seed"][s]["ensemble"]["sharpe"] for s in ("0", "1")]
    assert report["summary"]["ensemble"]["metrics"]["sharpe"]["mean"] == pytest.approx(np.mean(seeds))
    assert report["summary"]["ensemble"]["metrics"]["sharpe"]["std"] == pytest.approx(np.std(seeds, ddof=1))
    for win in report["windows"]:
        assert win["turbulence_threshold"] > 0 and 0 <= win["turbulent_bars"] <= win["trade_bars"]
    for name in strategies:
        assert f"| {name} |" in report["table_markdown"]
    run_dir = Path(report["run_dir"])
    assert (run_dir / "equity.png").stat().st_size > 10_000 and (run_dir / "finrl_protocol.md").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(report["mlflow"]["tracking_uri"])
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["metrics_sha256"] == report["metrics_sha256"]
    assert run.data.metrics["ensemble_sharpe_mean"] == pytest.approx(
        report["summary"]["ensemble"]["metrics"]["sharpe"]["mean"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"finrl_protocol.json", "metrics.json",
                                                                        "equity.png"}


@pytest.mark.slow
def test_later_bars_never_change_an_earlier_window(finrl_runs):
    """Windows whose training, validation and trading bars all end before PERTURB_FROM keep their members'
    validation Sharpes, their choice and their turbulence threshold; a window that trades after it changes (so
    the comparison can fail)."""
    report, _, perturbed = finrl_runs
    cut = PERTURB_FROM
    before = [w["window"] - 1 for w in report["windows"] if w["trade_end"] < cut]
    after = [w["window"] - 1 for w in report["windows"] if w["val_start"] >= cut]
    assert before and after
    for k in before:
        assert perturbed["choices"]["0"][k] == report["choices"]["0"][k]
        assert perturbed["windows"][k] == report["windows"][k]
    assert any(perturbed["choices"]["0"][k]["val_sharpe"] != report["choices"]["0"][k]["val_sharpe"]
               for k in after)
