"""Readers and validation on real bars, including the shared files with real defects."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLED, REPO, shared
from raytrade.data import BAR_COLUMNS, load_bars, read_bars, validate_bars
from raytrade.errors import DataValidationError


def _raises(bars: pd.DataFrame) -> DataValidationError:
    with pytest.raises(DataValidationError) as err:
        validate_bars(bars)
    return err.value


def test_bundled_file_is_valid_and_unchanged(btc_bars):
    raw = pd.read_parquet(BUNDLED)
    assert list(btc_bars.columns[: len(BAR_COLUMNS)]) == list(BAR_COLUMNS)
    assert len(btc_bars) == len(raw) == 20111
    pd.testing.assert_frame_equal(btc_bars.reset_index(drop=True), raw.reset_index(drop=True), check_dtype=False)


def test_dji_corrupt_bar_is_named():
    err = _raises(read_bars(shared("finrl_dji_1d.parquet")))
    assert err.rule == "ohlc_relation"
    assert err.column == "high"
    assert err.symbol == "^DJI"
    assert pd.Timestamp(err.timestamp) == pd.Timestamp("2015-08-31", tz="UTC")
    assert "2015-08-31" in str(err) and "ohlc_relation" in str(err)


def test_yahoo_csv_layout_is_read_and_checked():
    err = _raises(read_bars(shared("finrl_dji_1d_yahoo.csv"), symbol="^DJI"))
    assert (err.rule, err.symbol) == ("ohlc_relation", "^DJI")
    assert pd.Timestamp(err.timestamp) == pd.Timestamp("2015-08-31", tz="UTC")
    googl = load_bars(shared("gymanytrading_googl_1d_yahoo.csv"), symbol="GOOGL")
    assert len(googl) == 2335
    assert googl["timestamp"].dt.tz is not None
    assert (googl["symbol"] == "GOOGL").all()
    assert "adj_close" in googl.columns  # kept aside, never mixed into close


def test_dow30_adjusted_close_breaks_low_rule():
    err = _raises(read_bars(shared("finrl_dow30_1d.parquet")))
    assert (err.rule, err.column, err.count) == ("ohlc_relation", "low", 8345)


def test_multi_symbol_files_are_valid():
    bars = load_bars(shared("freqtrade_binance_altbtc_5m.parquet"))
    assert bars["symbol"].nunique() == 10
    eth = load_bars(shared("nfi_binance_btc_eth_usdt_1h.parquet"), symbol="ETH/USDT")
    assert set(eth["symbol"]) == {"ETH/USDT"}


@pytest.mark.parametrize(
    ("corrupt", "rule", "column"),
    [
        (lambda b: b.drop(columns="volume"), "missing_columns", "volume"),
        (lambda b: b.assign(close=b["close"].where(b.index != 700)), "nan", "close"),
        (lambda b: b.assign(open=b["open"].where(b.index != 700, -1.0)), "non_positive_price", "open"),
        (lambda b: b.assign(volume=b["volume"].where(b.index != 700, -5.0)), "negative_volume", "volume"),
        (lambda b: b.assign(low=b["low"].where(b.index != 700, b["high"] * 1.01)), "ohlc_relation", "high"),
    ],
)
def test_each_rule_names_column_and_first_bad_timestamp(btc_bars, corrupt, rule, column):
    bars = btc_bars.iloc[:1000].copy()
    err = _raises(corrupt(bars))
    assert (err.rule, err.column) == (rule, column)
    if rule != "missing_columns":
        assert err.symbol == "BTC/USD"
        assert err.timestamp == bars["timestamp"].iloc[700]


def test_duplicate_and_unsorted_timestamps(btc_bars):
    bars = btc_bars.iloc[:500]
    dup = pd.concat([bars.iloc[:300], bars.iloc[[299]], bars.iloc[300:]], ignore_index=True)
    err = _raises(dup)
    assert (err.rule, err.timestamp) == ("duplicate_timestamp", bars["timestamp"].iloc[299])
    swapped = bars.copy()
    swapped.iloc[[200, 201]] = swapped.iloc[[201, 200]].to_numpy()
    err = _raises(swapped)
    assert (err.rule, err.timestamp) == ("unsorted_timestamps", bars["timestamp"].iloc[200])


def test_validation_does_not_modify_input(btc_bars):
    bars = btc_bars.iloc[:200].copy()
    before = bars.copy()
    assert validate_bars(bars) is bars
    pd.testing.assert_frame_equal(bars, before)


def test_max_bars_keeps_the_last_bars():
    bars = load_bars(BUNDLED, max_bars=100)
    full = pd.read_parquet(BUNDLED)
    assert len(bars) == 100
    assert bars["timestamp"].iloc[-1] == full["timestamp"].iloc[-1]
    assert np.allclose(bars["close"].to_numpy(), full["close"].to_numpy()[-100:])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytrade.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_validate_exit_codes_and_one_line_message():
    ok = _cli("validate", "--input", str(BUNDLED))
    assert ok.returncode == 0, ok.stderr
    assert "20111 bars" in ok.stdout
    bad = _cli("validate", "--input", str(shared("finrl_dji_1d.parquet")))
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert "2015-08-31" in lines[0] and "ohlc_relation" in lines[0] and "high" in lines[0]
    debug = _cli("validate", "--input", str(shared("finrl_dji_1d.parquet")), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_validate_reports_gaps_per_symbol_as_json():
    import json

    out = _cli("validate", "--input", str(shared("nfi_binance_btc_eth_usdt_1h.parquet")), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    gaps = {i["symbol"]: i for i in report["issues"] if i["rule"] == "gap"}
    assert set(gaps) == {"BTC/USDT", "ETH/USDT"}
    assert all(g["count"] == 6 and g["missing_bars"] == 11 and g["severity"] == "warning" for g in gaps.values())


def test_cli_validate_table_names_ohlc_violations_per_symbol():
    out = _cli("validate", "--input", str(shared("finrl_dow30_1d.parquet")))
    assert out.returncode == 1
    rows = [line for line in out.stdout.splitlines() if line.startswith("error") and "ohlc_relation" in line]
    assert len(rows) >= 20 and any(" AAPL " in r for r in rows)
    assert "8345" in out.stderr


def test_cli_ingest_directory_with_repair_policy(tmp_path):
    from raytrade.data.ingest import read_many

    out = _cli("ingest", "--input", str(shared("nfi_binance_btc_eth_usdt_1h.parquet")), "--output",
               str(tmp_path / "store"), "--policy", "repair")
    assert out.returncode == 0, out.stderr
    assert "22 gap bars inserted" in out.stdout
    stored = read_many(tmp_path / "store")
    assert set(stored["symbol"]) == {"BTC/USDT", "ETH/USDT"}
    assert int(stored["repaired"].sum()) == 22 and len(stored) == 10964 + 22
    validate_bars(stored)
    bad = _cli("ingest", "--input", str(shared("finrl_dji_1d.parquet")), "--output", str(tmp_path / "dji"))
    assert bad.returncode == 1 and "2015-08-31" in bad.stderr and not (tmp_path / "dji").exists()
