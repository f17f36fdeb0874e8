"""The full validation report and the fail/drop/repair policies, on real bars and corrupt copies of them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLED, shared
from raytrade.data import read_bars, validate_bars
from raytrade.data.validation import RULES, Issue, ValidationReport, apply_policy, validate
from raytrade.errors import DataValidationError


def _issues(report: ValidationReport, rule: str) -> list[Issue]:
    return [i for i in report.issues if i.rule == rule]


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# ------------------------------------------------------------------ the shared files and their known defects


def test_dji_one_corrupt_bar_fail_and_drop():
    bars = read_bars(shared("finrl_dji_1d.parquet"))
    report = validate(bars)
    assert not report.ok
    (err,) = report.errors()
    assert (err.rule, err.severity, err.column, err.symbol, err.count) == ("ohlc_relation", "error", "high", "^DJI", 1)
    assert err.first_timestamp == _ts("2015-08-31")
    assert report.first_error() is err
    assert err.examples[0]["timestamp"].startswith("2015-08-31")
    assert err.examples[0]["high"] < err.examples[0]["open"]

    with pytest.raises(DataValidationError) as caught:
        apply_policy(bars, "fail")
    assert caught.value.rule == "ohlc_relation" and "2015-08-31" in str(caught.value)

    dropped, drop_report = apply_policy(bars, "drop")
    assert len(bars) - len(dropped) == 1
    assert _ts("2015-08-31") not in set(dropped["timestamp"])
    assert drop_report.dropped == {"ohlc_relation": {"^DJI": 1}}
    assert err.action is None and drop_report.errors()[0].action == "dropped"
    assert validate_bars(dropped) is dropped
    assert len(bars) == 4527  # the input is untouched


def test_dow30_adjusted_close_reported_per_symbol():
    bars = read_bars(shared("finrl_dow30_1d.parquet"))
    report = validate(bars)
    errors = report.errors()
    assert {i.rule for i in errors} == {"ohlc_relation"}
    assert sum(i.count for i in errors) == 8345
    assert len(report.symbols) == 29
    # independent per-symbol count of the low rule on the raw file
    low_bad = bars["low"] > np.minimum(bars["open"], bars["close"]) * (1 + 1e-9)
    expected = {s: int(n) for s, n in low_bad.groupby(bars["symbol"]).sum().items() if n}
    assert {i.symbol: i.count for i in errors} == expected
    # the three stocks whose adjusted close equals the close (no dividends in the window) are clean
    assert len(expected) == 26 and {"BA", "CRM", "DIS"}.isdisjoint({i.symbol for i in errors})
    assert all(i.column == "low" for i in errors)
    for issue in errors:
        first = bars.index[(bars["symbol"] == issue.symbol) & low_bad][0]
        assert issue.first_timestamp == bars.at[first, "timestamp"]
    # validate_bars still raises the first one with the all-symbol count
    with pytest.raises(DataValidationError) as caught:
        validate_bars(bars)
    assert (caught.value.rule, caught.value.symbol, caught.value.count) == ("ohlc_relation", errors[0].symbol, 8345)


def test_nfi_gaps_zero_volume_and_repair():
    bars = read_bars(shared("nfi_binance_btc_eth_usdt_1h.parquet"))
    report = validate(bars)
    assert report.ok and report.errors() == []
    assert report.symbols == {"BTC/USDT": {"rows": 5482, "interval_s": 3600.0},
                              "ETH/USDT": {"rows": 5482, "interval_s": 3600.0}}
    gaps = {i.symbol: i for i in _issues(report, "gap")}
    assert set(gaps) == {"BTC/USDT", "ETH/USDT"}
    for gap in gaps.values():
        assert (gap.severity, gap.count, gap.missing_bars) == ("warning", 6, 11)
        assert gap.first_timestamp == _ts("2020-12-21 18:00")
        assert gap.examples[0]["previous_timestamp"] == "2020-12-21T14:00:00+00:00"
        assert gap.examples[0]["missing_bars"] == 3
    zero = {i.symbol: i.count for i in _issues(report, "zero_volume")}
    assert zero == {"BTC/USDT": 2, "ETH/USDT": 2}

    _, fail_report = apply_policy(bars, "fail")  # warnings never raise
    assert fail_report.ok
    repaired, rep = apply_policy(bars, "repair")
    assert rep.inserted == {"BTC/USDT": 11, "ETH/USDT": 11}
    assert rep.dropped == {}
    assert all(i.action == "filled" for i in _issues(rep, "gap"))
    assert len(repaired) == len(bars) + 22
    assert repaired["repaired"].dtype == bool
    new = repaired[repaired["repaired"]]
    assert new.groupby("symbol").size().to_dict() == {"BTC/USDT": 11, "ETH/USDT": 11}
    assert (new["volume"] == 0).all()
    assert (repaired.loc[~repaired["repaired"], bars.columns].reset_index(drop=True)).equals(bars)
    for symbol, group in repaired.groupby("symbol", sort=False):
        group = group.reset_index(drop=True)
        assert group["timestamp"].is_monotonic_increasing, symbol
        assert (group["timestamp"].diff().dropna() == pd.Timedelta(hours=1)).all(), symbol
        inserted = group.index[group["repaired"]]
        prev_close = group["close"].shift(1)[inserted]
        for col in ("open", "high", "low", "close"):
            # OHLC of an inserted bar = the close of the bar before it (real or inserted: a run stays flat)
            assert np.allclose(group.loc[inserted, col], prev_close), (symbol, col)
    assert repaired["timestamp"].is_monotonic_increasing  # the file is one interleaved timeline; still is
    after = validate(repaired)
    assert after.ok and _issues(after, "gap") == []
    assert validate_bars(repaired) is repaired


def test_freqtrade_multi_symbol_gaps():
    bars = read_bars(shared("freqtrade_binance_altbtc_5m.parquet"))
    report = validate(bars)
    assert report.ok
    gaps = _issues(report, "gap")
    assert sum(i.count for i in gaps) == 17
    assert sum(i.missing_bars for i in gaps) == 52
    assert all(report.symbols[s]["interval_s"] == 300.0 for s in report.symbols) and len(report.symbols) == 10
    repaired, rep = apply_policy(bars, "repair")
    assert rep.inserted == {i.symbol: i.missing_bars for i in gaps}
    assert int(repaired["repaired"].sum()) == 52
    assert _issues(validate(repaired), "gap") == []


def test_bundled_btc_is_ok_with_28_zero_volume_bars(btc_bars):
    report = validate(btc_bars)
    assert report.ok
    (zero,) = _issues(report, "zero_volume")
    assert (zero.symbol, zero.column, zero.count) == ("BTC/USD", "volume", 28)
    assert zero.runs is not None and 1 <= zero.runs < 28
    assert sum(e["bars"] for e in zero.examples) <= 28
    assert (btc_bars["volume"] == 0).sum() == 28
    assert _issues(report, "gap") == []
    bars, same_report = apply_policy(btc_bars, "fail")
    assert bars is btc_bars and same_report.ok


def test_daily_stock_weekends_are_not_gaps():
    bars = read_bars(shared("gymanytrading_googl_1d_yahoo.csv"), symbol="GOOGL")
    report = validate(bars)
    assert report.ok
    assert report.symbols["GOOGL"]["interval_s"] == 86400.0
    years = (bars["timestamp"].iloc[-1] - bars["timestamp"].iloc[0]).days / 365.25
    missing = sum(i.missing_bars for i in _issues(report, "gap"))
    assert missing < 15 * years  # holidays only (about 9 a year); counting weekends would be ~104 a year
    for gap in _issues(report, "gap"):
        for ex in gap.examples:
            prev, cur = (np.datetime64(ex[k][:10]) for k in ("previous_timestamp", "timestamp"))
            assert np.busday_count(prev, cur) > 1  # a weekday is missing, not just a weekend
    # daily gaps are reported, never filled
    same, rep = apply_policy(bars, "repair")
    assert rep.inserted == {} and not same["repaired"].any() and len(same) == len(bars)


# ------------------------------------------------------------------ corrupt copies of real bars


@pytest.fixture()
def corrupt_btc(btc_bars) -> pd.DataFrame:
    """Real BTC bars 0..999 with a NaN close at 700, a broken low at 300 and row 500 duplicated."""
    bars = btc_bars.iloc[:1000].copy()
    bars.loc[700, "close"] = np.nan
    bars.loc[300, "low"] = bars.loc[300, "high"] * 1.01
    bars.loc[820, "volume"] = -1.0
    return pd.concat([bars.iloc[:501], bars.iloc[[500]], bars.iloc[501:]], ignore_index=True)


def test_every_error_is_reported_with_count_and_first_timestamp(btc_bars, corrupt_btc):
    ts = btc_bars["timestamp"]
    report = validate(corrupt_btc)
    got = [(i.rule, i.column, i.symbol, i.count, i.first_timestamp) for i in report.errors()]
    assert got == [
        ("nan", "close", "BTC/USD", 1, ts.iloc[700]),
        ("negative_volume", "volume", "BTC/USD", 1, ts.iloc[820]),
        ("ohlc_relation", "high", "BTC/USD", 1, ts.iloc[300]),
        ("duplicate_timestamp", "timestamp", "BTC/USD", 1, ts.iloc[500]),
    ]
    assert report.errors()[0].examples == [{"row": 701, "timestamp": ts.iloc[700].isoformat(), "close": "nan"}]
    assert report.errors()[3].examples[0]["row"] == 501

    with pytest.raises(DataValidationError) as caught:
        apply_policy(corrupt_btc, "fail")
    assert (caught.value.rule, caught.value.column, caught.value.timestamp) == ("nan", "close", ts.iloc[700])
    with pytest.raises(DataValidationError) as strict:
        validate_bars(corrupt_btc)
    assert str(strict.value) == str(caught.value)

    clean, rep = apply_policy(corrupt_btc, "drop")
    assert rep.dropped == {"nan": {"BTC/USD": 1}, "negative_volume": {"BTC/USD": 1},
                           "ohlc_relation": {"BTC/USD": 1}, "duplicate_timestamp": {"BTC/USD": 1}}
    assert len(clean) == len(corrupt_btc) - 4
    assert 500 in clean.index and 501 not in clean.index  # the first of the duplicates is kept
    assert validate_bars(clean) is clean


def test_errors_are_attributed_to_each_symbol():
    bars = read_bars(shared("nfi_binance_btc_eth_usdt_1h.parquet"))
    eth_row = bars.index[bars["symbol"] == "ETH/USDT"][100]
    btc_rows = bars.index[bars["symbol"] == "BTC/USDT"][[300, 301, 302]]
    bars.loc[eth_row, "open"] = np.nan
    bars.loc[btc_rows, "open"] = np.inf
    report = validate(bars)
    nan = _issues(report, "nan")
    assert [(i.symbol, i.count, i.first_timestamp) for i in nan] == [
        ("ETH/USDT", 1, bars.at[eth_row, "timestamp"]), ("BTC/USDT", 3, bars.at[btc_rows[0], "timestamp"])]
    assert [e["open"] for e in nan[1].examples] == ["inf"] * 3
    with pytest.raises(DataValidationError) as caught:
        report.raise_first()
    assert (caught.value.symbol, caught.value.count) == ("ETH/USDT", 4)  # first in table order, all-symbol count
    clean, rep = apply_policy(bars, "drop")
    assert rep.dropped == {"nan": {"ETH/USDT": 1, "BTC/USDT": 3}}
    assert validate_bars(clean) is clean


def test_outlier_return_flags_a_tripled_close(btc_bars):
    bars = btc_bars.iloc[:1000].copy()
    assert _issues(validate(bars), "outlier_return") == []
    bars.loc[700, "close"] *= 3
    (outlier,) = _issues(validate(bars), "outlier_return")
    assert (outlier.severity, outlier.symbol, outlier.column) == ("warning", "BTC/USD", "close")
    assert outlier.first_timestamp == bars.at[700, "timestamp"]
    assert outlier.count == 2  # the jump up and the return down on the next bar
    assert outlier.examples[0]["log_return"] == pytest.approx(np.log(bars.at[700, "close"] / bars.at[699, "close"]))
    # a looser threshold flags more, a far stricter one nothing
    assert _issues(validate(bars, outlier_mad=1e6), "outlier_return") == []
    (loose,) = _issues(validate(bars, outlier_mad=4), "outlier_return")
    assert loose.count > outlier.count


def test_structural_errors_stop_the_checks(btc_bars):
    bars = btc_bars.iloc[:200].copy()
    bars.loc[10, "close"] = np.nan  # would be a nan error, but structure is checked first
    report = validate(bars.drop(columns=["volume", "low"]))
    assert [(i.rule, i.column) for i in report.issues] == [("missing_columns", "low")]
    assert "volume" in report.issues[0].message

    as_text = bars.assign(close=bars["close"].astype(object).where(bars.index != 5, "n/a"))
    naive = as_text.assign(timestamp=as_text["timestamp"].dt.tz_localize(None))
    report = validate(naive)
    assert [(i.rule, i.column) for i in report.issues] == [("timestamp_type", "timestamp"), ("dtype", "close")]
    assert report.issues[1].count == 1 and report.issues[1].examples[0]["close"] == "n/a"
    with pytest.raises(DataValidationError) as caught:
        validate_bars(as_text)
    assert (caught.value.rule, caught.value.column) == ("dtype", "close")
    assert caught.value.timestamp == bars.at[5, "timestamp"]

    empty = validate(bars.iloc[:0])
    assert [i.rule for i in empty.issues] == ["empty"]
    for policy in ("drop", "repair"):
        with pytest.raises(DataValidationError, match="rule=empty"):
            apply_policy(bars.iloc[:0], policy)


def test_missing_timestamp_is_a_nan_error(btc_bars):
    bars = btc_bars.iloc[:300].copy()
    bars.loc[120, "timestamp"] = pd.NaT
    (issue,) = validate(bars).errors()
    assert (issue.rule, issue.column, issue.count, issue.first_timestamp) == ("nan", "timestamp", 1, None)
    assert issue.examples == [{"row": 120, "timestamp": None}]
    clean, rep = apply_policy(bars, "repair")
    assert rep.dropped == {"nan": {"BTC/USD": 1}} and rep.inserted == {"BTC/USD": 1}
    assert clean.loc[clean["repaired"], "timestamp"].tolist() == [btc_bars.at[120, "timestamp"]]


def test_drop_cannot_fix_order_but_leaves_fail_untouched(btc_bars):
    bars = btc_bars.iloc[:500].copy()
    swapped = bars.copy()
    swapped.iloc[[200, 201]] = swapped.iloc[[201, 200]].to_numpy()
    for policy in ("drop", "repair"):
        with pytest.raises(DataValidationError) as caught:
            apply_policy(swapped, policy)
        assert (caught.value.rule, caught.value.timestamp) == ("unsorted_timestamps", bars["timestamp"].iloc[200])
    # a stray copy of an old bar appended at the end is a duplicate AND out of order: dropping it fixes both
    stray = pd.concat([bars, bars.iloc[[10]]], ignore_index=True)
    assert [i.rule for i in validate(stray).errors()] == ["duplicate_timestamp", "unsorted_timestamps"]
    clean, _ = apply_policy(stray, "drop")
    assert clean.equals(bars)
    before = stray.copy()
    with pytest.raises(DataValidationError):
        apply_policy(stray, "fail")
    pd.testing.assert_frame_equal(stray, before)
    with pytest.raises(ValueError, match="policy"):
        apply_policy(bars, "ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------ output formats


def test_format_table_and_to_dict(corrupt_btc):
    bars = corrupt_btc.drop(index=[950, 951]).copy()  # a 2-bar gap
    bars.loc[900, "close"] *= 3
    bars.loc[[960, 961, 970], "volume"] = 0.0
    report = validate(bars)
    rules = {i.rule for i in report.issues}
    assert rules == {"nan", "negative_volume", "ohlc_relation", "duplicate_timestamp", "gap", "zero_volume",
                     "outlier_return"}
    (zero,) = _issues(report, "zero_volume")
    assert (zero.count, zero.runs) == (3, 2)
    (gap,) = _issues(report, "gap")
    assert (gap.count, gap.missing_bars, gap.first_timestamp) == (1, 2, bars.at[952, "timestamp"])
    table = report.format_table()
    for rule in rules:
        assert rule in table
    assert "BTC/USD" in table and "FAILED" in table
    assert len(table.splitlines()) == len(report.issues) + 2
    payload = report.to_dict()
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload
    assert payload["ok"] is False and payload["n_errors"] == 4 and len(payload["issues"]) == len(report.issues)

    frame = report.to_frame()
    assert list(frame.columns[:7]) == ["rule", "severity", "symbol", "column", "count", "first_timestamp", "message"]
    assert frame["rule"].tolist() == [i.rule for i in report.issues]
    assert set(frame["severity"]) == {"error", "warning"} and set(frame["rule"]) <= set(RULES)

    multi = validate(read_bars(shared("nfi_binance_btc_eth_usdt_1h.parquet"))).format_table()
    assert "BTC/USDT" in multi and "ETH/USDT" in multi and "gap" in multi

    clean = validate(read_bars(BUNDLED).iloc[:500], include_warnings=False)
    assert clean.ok and clean.issues == [] and clean.to_frame().empty
    assert clean.format_table().splitlines()[-1] == "no issues"
    assert json.loads(json.dumps(clean.to_dict())) == clean.to_dict()


def test_validate_bars_agrees_with_the_report():
    for name, symbol in [("finrl_dji_1d.parquet", None), ("finrl_dji_1d_yahoo.csv", "^DJI"),
                         ("finrl_dow30_1d.parquet", None), ("nautilus_ftx_btcperp_1m.parquet", None)]:
        bars = read_bars(shared(name), symbol=symbol)
        first = validate(bars).first_error()
        if first is None:
            assert validate_bars(bars) is bars
            continue
        with pytest.raises(DataValidationError) as caught:
            validate_bars(bars)
        got = caught.value
        assert (got.rule, got.column, got.symbol, got.timestamp) == (
            first.rule, first.column, first.symbol, first.first_timestamp), name
