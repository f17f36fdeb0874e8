"""Cross-sectional forecast metrics (raytrade.evaluation.cross_section) on the 13 daily US stocks and ETFs of
../shared/data/lean_us_equity_etf_1d.parquet from 2012-05-18 (the first day all of them trade): predicted = the
past 20-day log return, realised = the next 5-day log return, next_return = the next 1-day log return. Every
expected number comes from a plain reference written here (scipy/numpy loops), not from the code under test."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from conftest import shared
from raytrade.errors import DataValidationError
from raytrade.evaluation.cross_section import (
    CrossSectionInputError,
    cross_sectional_metrics,
    icir,
    long_short_series,
    per_symbol_metrics,
    rank_ic,
    rank_ic_series,
    t_stat,
)

HORIZON = 5


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    bars = pd.read_parquet(shared("lean_us_equity_etf_1d.parquet")).sort_values(["symbol", "timestamp"])
    log_close = np.log(bars["close"])
    by_symbol = log_close.groupby(bars["symbol"])
    bars["predicted"] = log_close - by_symbol.shift(20)
    bars["realised"] = by_symbol.shift(-HORIZON) - log_close
    bars["next_return"] = by_symbol.shift(-1) - log_close
    rows = bars[(bars["timestamp"] >= "2012-05-18") & bars["predicted"].notna()]
    assert rows["symbol"].nunique() == 13
    return rows[["timestamp", "symbol", "predicted", "realised", "next_return"]].reset_index(drop=True)


def _args(frame: pd.DataFrame, predicted: str = "predicted") -> tuple:
    return frame["timestamp"], frame["symbol"], frame[predicted], frame["realised"]


def _reference_ic(frame: pd.DataFrame, predicted: str = "predicted", min_symbols: int = 2) -> pd.Series:
    """Per-timestamp scipy.stats.spearmanr across the symbols whose realised return is known."""
    out = {}
    for when, rows in frame.groupby("timestamp"):
        rows = rows[rows["realised"].notna()]
        if len(rows) < min_symbols:
            out[when] = math.nan
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConstantInputWarning: scipy returns NaN, as the code must
            out[when] = float(spearmanr(rows[predicted].to_numpy(), rows["realised"].to_numpy()).statistic)
    return pd.Series(out, dtype=float)


def _reference_long_short(frame: pd.DataFrame, returns: np.ndarray, k: int | None, quantile: float | None) -> dict:
    """Top-minus-bottom by a plain sort of (predicted, symbol) per timestamp."""
    frame = frame.assign(ret=returns)
    out = {}
    for when, rows in frame.groupby("timestamp"):
        items = sorted((p, s, r) for p, s, r in zip(rows["predicted"], rows["symbol"], rows["ret"], strict=True)
                       if not math.isnan(r))
        n = len(items)
        legs = k if k is not None else max(1, int(round(quantile * n, 9)))
        if n < 2 or n < 2 * legs:
            out[when] = math.nan
            continue
        top = [r for _, _, r in items[n - legs:]]
        bottom = [r for _, _, r in items[:legs]]
        out[when] = sum(top) / legs - sum(bottom) / legs
    return out


def test_rank_ic_series_matches_a_per_timestamp_spearman_loop(panel):
    ic = rank_ic_series(*_args(panel))
    ref = _reference_ic(panel)
    assert list(ic.index) == sorted(panel["timestamp"].unique())
    assert ic.index.equals(ref.index)
    np.testing.assert_allclose(ic.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12, equal_nan=True)
    # the last HORIZON timestamps have no realised return: NaN, excluded from the means
    assert ic.iloc[-HORIZON:].isna().all() and ic.iloc[:-HORIZON].notna().all()
    defined = ref.dropna().to_numpy()
    assert rank_ic(ic) == pytest.approx(defined.mean(), abs=1e-14)
    per_bar = defined.mean() / defined.std(ddof=1)
    assert icir(ic) == pytest.approx(per_bar, rel=1e-12)
    assert icir(ic, periods_per_year=252, horizon=HORIZON) == pytest.approx(per_bar * math.sqrt(252 / HORIZON))


def test_row_order_of_the_input_does_not_matter(panel):
    shuffled = panel.sample(frac=1.0, random_state=3)
    pd.testing.assert_series_equal(rank_ic_series(*_args(shuffled)), rank_ic_series(*_args(panel)))
    pd.testing.assert_series_equal(
        long_short_series(shuffled["timestamp"], shuffled["symbol"], shuffled["predicted"], shuffled["realised"], k=2),
        long_short_series(panel["timestamp"], panel["symbol"], panel["predicted"], panel["realised"], k=2))


def test_constant_or_thin_timestamps_give_nan_and_are_left_out_of_the_mean(panel):
    days = sorted(panel["timestamp"].unique())
    flat_day, thin_day = days[100], days[200]
    frame = panel.copy()
    frame.loc[frame["timestamp"] == flat_day, "predicted"] = 0.01  # a constant forecast carries no ranking
    frame = frame[(frame["timestamp"] != thin_day) | (frame["symbol"] == "SPY")]  # one symbol left that day
    ic = rank_ic_series(*_args(frame))
    assert math.isnan(ic[flat_day]) and math.isnan(ic[thin_day])
    ref = _reference_ic(frame)
    np.testing.assert_allclose(ic.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12, equal_nan=True)
    assert rank_ic(ic) == pytest.approx(float(np.nanmean(ref.to_numpy())), abs=1e-14)
    # a threshold above the universe size leaves no timestamp
    none = rank_ic_series(*_args(panel), min_symbols=14)
    assert none.isna().all() and math.isnan(rank_ic(none)) and math.isnan(icir(none))


@pytest.mark.parametrize(("k", "quantile"), [(3, None), (1, None), (None, 0.2), (None, 0.5)])
def test_long_short_matches_a_plain_sort_per_timestamp(panel, k, quantile):
    spread = long_short_series(panel["timestamp"], panel["symbol"], panel["predicted"], panel["realised"], k=k,
                               quantile=quantile)
    ref = pd.Series(_reference_long_short(panel, panel["realised"].to_numpy(), k, quantile), dtype=float)
    assert spread.index.equals(ref.index)
    np.testing.assert_allclose(spread.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-14, equal_nan=True)
    assert spread.iloc[:-HORIZON].notna().all()


def test_long_short_needs_two_legs_of_k_symbols(panel):
    spread = long_short_series(panel["timestamp"], panel["symbol"], panel["predicted"], panel["realised"], k=7)
    assert spread.isna().all()  # 13 symbols cannot fill two legs of 7


def test_perfect_foresight_scores_rank_ic_one_and_a_positive_long_short(panel):
    frame = panel.copy()
    known = frame["realised"].notna()
    frame.loc[known, "predicted"] = frame.loc[known, "realised"]
    metrics = cross_sectional_metrics(*_args(frame), horizon=HORIZON, n_bootstrap=200, seed=1)
    ic = rank_ic_series(*_args(frame)).dropna()
    assert np.allclose(ic.to_numpy(), 1.0, atol=1e-12)
    assert metrics["rank_ic"]["value"] == pytest.approx(1.0)
    spread = long_short_series(frame["timestamp"], frame["symbol"], frame["predicted"], frame["realised"])
    assert (spread.dropna() > 0).all()
    ls = metrics["long_short_return"]
    assert ls["value"] == pytest.approx(spread.dropna().mean(), rel=1e-12)
    assert 0 < ls["ci_low"] <= ls["value"] <= ls["ci_high"]
    assert metrics["long_short_basis"] == "realised"


def test_shuffled_predictor_has_intervals_covering_zero(panel):
    frame = panel.copy()
    frame["predicted"] = np.random.default_rng(11).permutation(frame["predicted"].to_numpy())
    metrics = cross_sectional_metrics(*_args(frame), frame["next_return"], horizon=HORIZON, seed=0)
    for name in ("rank_ic", "icir", "long_short_return"):
        entry = metrics[name]
        assert entry["ci_low"] < 0 < entry["ci_high"], (name, entry)
    assert abs(metrics["rank_ic"]["value"]) < 0.03


def test_metrics_on_next_return_match_a_reference_and_are_deterministic(panel):
    args = (*_args(panel), panel["next_return"])
    metrics = cross_sectional_metrics(*args, k=2, horizon=HORIZON, periods_per_year=252, n_bootstrap=300, seed=5)
    simple = np.expm1(panel["next_return"].to_numpy())
    ref = np.array([v for v in _reference_long_short(panel, simple, 2, None).values() if not math.isnan(v)])
    assert metrics["long_short_basis"] == "next_return" and metrics["long_short_k"] == 2
    assert metrics["n_long_short_timestamps"] == ref.size == panel["timestamp"].nunique() - 1
    assert metrics["long_short_return"]["value"] == pytest.approx(ref.mean(), rel=1e-12)
    assert metrics["long_short_t_stat"] == pytest.approx(ref.mean() / (ref.std(ddof=1) / math.sqrt(ref.size)))
    ic = _reference_ic(panel).dropna().to_numpy()
    assert metrics["n_timestamps"] == ic.size
    assert metrics["icir_annualised"]["value"] == pytest.approx(
        ic.mean() / ic.std(ddof=1) * math.sqrt(252 / HORIZON), rel=1e-12)
    assert metrics["n_symbols"] == 13 and metrics["n_rows"] == int(panel["realised"].notna().sum())
    for entry in ("rank_ic", "icir", "icir_annualised", "long_short_return"):
        assert metrics[entry]["ci_low"] < metrics[entry]["ci_high"]

    again = cross_sectional_metrics(*args, k=2, horizon=HORIZON, periods_per_year=252, n_bootstrap=300, seed=5)
    assert json.dumps(again) == json.dumps(metrics)
    other = cross_sectional_metrics(*args, k=2, horizon=HORIZON, periods_per_year=252, n_bootstrap=300, seed=6)
    assert other["rank_ic"]["value"] == metrics["rank_ic"]["value"]
    assert other["rank_ic"]["ci_low"] != metrics["rank_ic"]["ci_low"]

    loaded = json.loads(json.dumps(metrics))
    assert set(loaded["per_symbol"]) == set(panel["symbol"].unique())


def test_per_symbol_metrics_match_numpy_and_pandas(panel):
    out = per_symbol_metrics(*_args(panel))
    assert list(out) == sorted(panel["symbol"].unique())
    for sym, rows in panel[panel["realised"].notna()].groupby("symbol"):
        p, r = rows["predicted"], rows["realised"]
        got = out[sym]
        assert got["n_rows"] == len(rows)
        assert got["ic"] == pytest.approx(float(np.corrcoef(p, r)[0, 1]), abs=1e-12)
        assert got["rank_ic"] == pytest.approx(float(p.corr(r, method="spearman")), abs=1e-12)
        hits = [(pp > 0) == (rr > 0) for pp, rr in zip(p, r, strict=True) if rr != 0 and pp != 0]
        misses_at_zero = sum(1 for pp, rr in zip(p, r, strict=True) if rr != 0 and pp == 0)
        assert got["directional_accuracy"] == pytest.approx(sum(hits) / (len(hits) + misses_at_zero))


def test_t_stat_plain_and_newey_west_against_hand_formulas(panel):
    x = rank_ic_series(*_args(panel)).to_numpy()
    v = x[~np.isnan(x)]
    n = v.size
    assert t_stat(x) == pytest.approx(v.mean() / (v.std(ddof=1) / math.sqrt(n)), rel=1e-12)
    lags = HORIZON - 1
    d = v - v.mean()
    lrv = d @ d / n + 2 * sum((1 - j / (lags + 1)) * (d[j:] @ d[:-j]) / n for j in range(1, lags + 1))
    assert t_stat(x, lags=lags) == pytest.approx(v.mean() / math.sqrt(lrv / n), rel=1e-10)
    assert math.isnan(t_stat([0.1])) and math.isnan(t_stat([0.2, 0.2, 0.2]))


def _raises(rule: str, column: str, call, *args, **kwargs) -> CrossSectionInputError:
    with pytest.raises(CrossSectionInputError) as info:
        call(*args, **kwargs)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, DataValidationError)
    assert err.rule == rule and err.column == column
    assert rule in str(err) and column in str(err)
    return err


def test_input_errors_name_the_field_and_first_bad_row(panel):
    ts, sym, pred, real = _args(panel)
    _raises("length_mismatch", "realised", rank_ic_series, ts, sym, pred, real.iloc[:-1])
    _raises("length_mismatch", "symbol", rank_ic_series, ts, sym.iloc[:-1], pred, real)
    _raises("length_mismatch", "next_return", cross_sectional_metrics, ts, sym, pred, real, panel["next_return"][:5])

    days = sorted(panel["timestamp"].unique())
    frame = panel.copy()
    frame.loc[(frame["timestamp"] == days[300]) & (frame["symbol"] == "WM"), "predicted"] = np.nan
    frame.loc[(frame["timestamp"] == days[40]) & (frame["symbol"] == "IBM"), "predicted"] = np.nan
    err = _raises("missing_prediction", "predicted", rank_ic_series, *_args(frame))
    assert err.timestamp == days[40] and err.symbol == "IBM" and err.count == 2
    assert "IBM" in str(err) and str(days[40]) in str(err)

    # a forecast may be missing where no outcome is known yet, unless next_return is scored there
    tail = panel.copy()
    tail.loc[(tail["timestamp"] == days[-1]) & (tail["symbol"] == "AAPL"), "predicted"] = np.nan
    rank_ic_series(*_args(tail))
    tail.loc[(tail["timestamp"] == days[-2]) & (tail["symbol"] == "AAPL"), "predicted"] = np.nan
    err = _raises("missing_prediction", "predicted", cross_sectional_metrics, *_args(tail), tail["next_return"])
    assert err.timestamp == days[-2] and err.symbol == "AAPL"

    dup = pd.concat([panel, panel[(panel["timestamp"] == days[7]) & (panel["symbol"] == "QQQ")]])
    err = _raises("duplicate_timestamp_symbol", "timestamp,symbol", rank_ic_series, *_args(dup))
    assert err.timestamp == days[7] and err.symbol == "QQQ"

    bad = panel.copy()
    bad.loc[(bad["timestamp"] == days[9]) & (bad["symbol"] == "USO"), "realised"] = np.inf
    err = _raises("non_finite", "realised", per_symbol_metrics, *_args(bad))
    assert err.timestamp == days[9] and err.symbol == "USO"

    missing = panel.copy()
    missing["symbol"] = missing["symbol"].astype(object)
    missing.loc[5, "symbol"] = None
    _raises("missing_symbol", "symbol", rank_ic_series, *_args(missing))

    restored = pickle.loads(pickle.dumps(err))
    assert type(restored) is CrossSectionInputError and restored.symbol == "USO" and str(restored) == str(err)


def test_bad_arguments_raise_value_error(panel):
    args = (panel["timestamp"], panel["symbol"], panel["predicted"], panel["realised"])
    for kwargs in ({"k": 2, "quantile": 0.2}, {"k": 0}, {"quantile": 0.7}, {"quantile": 0.0}):
        with pytest.raises(ValueError, match="k|quantile"):
            long_short_series(*args, **kwargs)
    with pytest.raises(ValueError, match="horizon"):
        cross_sectional_metrics(*args, horizon=0)
    with pytest.raises(ValueError, match="min_symbols"):
        rank_ic_series(*args, min_symbols=1)
    with pytest.raises(ValueError, match="lags"):
        t_stat([0.1, 0.2, 0.3], lags=-1)
    with pytest.raises(ValueError, match="periods_per_year"):
        icir([0.1, 0.2, 0.3], periods_per_year=0)


def test_tied_forecasts_get_average_ranks_and_a_symbol_order_tie_break(panel):
    frame = panel.assign(coarse=np.sign(panel["predicted"]))  # -1/+1: many ties, some days constant
    ic = rank_ic_series(*_args(frame, "coarse"))
    ref = _reference_ic(frame, "coarse")
    assert ref.isna().sum() > HORIZON  # some days every symbol moved the same way: no ranking, NaN
    np.testing.assert_allclose(ic.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12, equal_nan=True)
    rows = frame.sample(frac=1.0, random_state=5)  # the tie-break must not depend on the input row order
    spread = long_short_series(rows["timestamp"], rows["symbol"], rows["coarse"], rows["realised"], k=3)
    ref_ls = pd.Series(_reference_long_short(frame.assign(predicted=frame["coarse"]), frame["realised"].to_numpy(),
                                             3, None), dtype=float)
    np.testing.assert_allclose(spread.to_numpy(), ref_ls.to_numpy(), rtol=0, atol=1e-14, equal_nan=True)
