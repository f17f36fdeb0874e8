"""Cross-sectional features (raytrade.features.cross_sectional) and their step in the Ray Data preprocessing.

Real data: five daily US stocks/ETFs of ``lean_us_equity_etf_1d.parquet`` (QQQ and FB start late inside the span)
and four Dow stocks of ``stooq_dow30_1d.parquet`` (CVX misses 2010-11-19, TRV 2011-02-17). Every expected value
is computed here independently (pandas rolling, scipy.stats.rankdata, a plain loop for the universe return,
numpy.cov / corrcoef for beta and correlation); the look-ahead tests cut the data at many timestamps.
"""

from __future__ import annotations

import bisect

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import shared
from raytrade.config import FeatureConfig, LabelConfig
from raytrade.data import load_bars
from raytrade.dataset.preprocess import preprocess, reference_series
from raytrade.features.cross_sectional import add_cross_sectional, cross_sectional_columns, cross_sectional_warmup
from raytrade.features.technical import compute_features, feature_columns, warmup_bars

FEATURES = FeatureConfig()
LABELS = LabelConfig(horizon=4, threshold=0.004)
XS = cross_sectional_columns(FEATURES)
W, B = FEATURES.cross_sectional_window, FEATURES.beta_window


def _subset(name: str, symbols: list[str], start: str, end: str) -> pd.DataFrame:
    bars = load_bars(shared(name))
    keep = bars["symbol"].isin(symbols) & (bars["timestamp"] >= start) & (bars["timestamp"] < end)
    return bars[keep].reset_index(drop=True)


@pytest.fixture(scope="module")
def lean() -> pd.DataFrame:
    """SPY, AAPL, IBM from 2011-01; QQQ lists 2011-03-23, FB 2012-05-18 (both late)."""
    return _subset("lean_us_equity_etf_1d.parquet", ["AAPL", "FB", "IBM", "QQQ", "SPY"], "2011-01-01", "2014-01-01")


@pytest.fixture(scope="module")
def stooq() -> pd.DataFrame:
    """Four Dow stocks; CVX misses 2010-11-19 and TRV 2011-02-17 (other calendars than the rest)."""
    return _subset("stooq_dow30_1d.parquet", ["AAPL", "CVX", "KO", "TRV"], "2009-01-01", "2011-09-01")


def long_features(bars: pd.DataFrame, cfg: FeatureConfig = FEATURES) -> tuple[pd.DataFrame, list[str]]:
    """Step 1 of the preprocessing without Ray: per-symbol features (with the reference symbol's) concatenated."""
    _, reference = reference_series(bars, cfg)
    frames = [compute_features(g, cfg, reference=reference) for _, g in bars.groupby("symbol", sort=False)]
    return pd.concat(frames, ignore_index=True), feature_columns(cfg, cross_asset=reference is not None)


def xs_of(bars: pd.DataFrame, cfg: FeatureConfig = FEATURES) -> pd.DataFrame:
    frame, cols = long_features(bars, cfg)
    return add_cross_sectional(frame, cfg, cols)


def reference_inputs(bars: pd.DataFrame) -> pd.DataFrame:
    """Independent per-symbol inputs and membership (pandas rolling, not TA-Lib)."""
    frame, cols = long_features(bars)
    out = []
    for _, g in frame.groupby("symbol", sort=False):
        c, v = g["close"], g["volume"]
        r1 = np.log(c / c.shift(1))
        inputs = pd.DataFrame({
            "r1": r1,
            "prev": g["timestamp"].shift(1),
            "ret": np.log(c / c.shift(W)),
            "vol": r1.rolling(W).std(ddof=0),
            "volume": np.log1p(v) - np.log1p(v.rolling(W).mean()),
        })
        inputs["member"] = g[cols].notna().all(axis=1) & inputs[["r1", "ret", "vol", "volume"]].notna().all(axis=1)
        out.append(pd.concat([g[["timestamp", "symbol"]], inputs], axis=1))
    return pd.concat(out)


# ---- ranks, z-scores, membership -----------------------------------------------------------------------------

def test_ranks_and_zscores_equal_scipy_per_timestamp(lean):
    got = xs_of(lean)
    ref = reference_inputs(lean)
    np.testing.assert_array_equal(got["xs_ret_rank"].notna().to_numpy(), ref["member"].to_numpy())
    members = ref[ref["member"]]
    sizes = members.groupby("timestamp").size()
    assert sizes.min() >= 3 and sizes.max() == 5  # the cross-section grows as QQQ and FB finish their warm-up
    for key in ("ret", "vol", "volume"):
        rank = np.full(len(ref), np.nan)
        z = np.full(len(ref), np.nan)
        for _, rows in members.groupby("timestamp"):
            x = rows[key].to_numpy()
            pos = ref.index.get_indexer(rows.index)
            rank[pos] = (stats.rankdata(x, method="average") - 1) / (len(x) - 1)
            z[pos] = stats.zscore(x, ddof=0)
        np.testing.assert_array_equal(got[f"xs_{key}_rank"].to_numpy(), rank, err_msg=key)
        np.testing.assert_allclose(got[f"xs_{key}_z"].to_numpy(), z, rtol=1e-7, atol=1e-9, err_msg=key)
        defined = got[f"xs_{key}_rank"].notna()
        assert got.loc[defined, f"xs_{key}_rank"].between(0, 1).all()


def test_ties_share_their_rank_and_one_member_gets_half_and_zero(lean):
    """A real series entered twice under two names ties at every t; a universe of one is ranked 0.5, z 0."""
    spy = lean[lean["symbol"] == "SPY"].reset_index(drop=True)
    three = pd.concat([spy, spy.assign(symbol="SPY_COPY"), lean[lean["symbol"] == "IBM"]], ignore_index=True)
    got = xs_of(three).dropna(subset=["xs_ret_rank"])
    a = got[got["symbol"] == "SPY"].set_index("timestamp")
    b = got[got["symbol"] == "SPY_COPY"].set_index("timestamp")
    ibm = got[got["symbol"] == "IBM"].set_index("timestamp")
    for key in ("ret", "vol", "volume"):
        np.testing.assert_array_equal(a[f"xs_{key}_rank"], b[f"xs_{key}_rank"])
        np.testing.assert_array_equal(a[f"xs_{key}_z"], b[f"xs_{key}_z"])
        assert set(np.unique(a[f"xs_{key}_rank"])) <= {0.25, 0.75}  # average of ranks (1, 2) or (2, 3), scaled
        np.testing.assert_array_equal(ibm[f"xs_{key}_rank"], np.where(a[f"xs_{key}_rank"] == 0.25, 1.0, 0.0))

    alone = xs_of(spy, FEATURES.model_copy(update={"cross_sectional": True})).dropna(subset=XS)
    assert len(alone) > 100
    for key in ("ret", "vol", "volume"):
        assert (alone[f"xs_{key}_rank"] == 0.5).all() and (alone[f"xs_{key}_z"] == 0.0).all()
    np.testing.assert_allclose(alone["xs_universe_ret"], np.log(alone["close"] / spy["close"].shift(1).loc[
        alone.index].to_numpy()), rtol=1e-12)
    np.testing.assert_allclose(alone[["xs_beta", "xs_corr"]].to_numpy(), 1.0, rtol=1e-9)


def test_late_starting_asset_is_absent_until_its_own_warmup_ends(lean):
    with_fb = xs_of(lean)
    without = xs_of(lean[lean["symbol"] != "FB"])
    fb_bars = lean[lean["symbol"] == "FB"]
    fb = with_fb[with_fb["symbol"] == "FB"]
    first_member = fb.loc[fb["xs_ret_rank"].notna(), "timestamp"].min()
    # FB trades well before it enters: its per-symbol warm-up (TA-Lib features of its own bars) decides when
    fb_own, cols = long_features(fb_bars)
    complete = fb_own[cols].notna().all(axis=1).to_numpy()
    assert first_member == fb_own["timestamp"][complete].min() > fb_bars["timestamp"].min()
    assert (fb_bars["timestamp"] < first_member).sum() >= 200
    assert fb.loc[fb["timestamp"] < first_member, XS].isna().all().all()

    key = ["symbol", "timestamp"]
    a = with_fb[with_fb["symbol"] != "FB"].set_index(key)
    b = without.set_index(key)
    before = a.index.get_level_values("timestamp") < first_member
    # until FB's warm-up ends every other symbol's cross-sectional values are as if FB did not exist ...
    pd.testing.assert_frame_equal(a.loc[before, XS], b.loc[a.index[before], XS])
    # ... and from then on FB counts: the others' ranks and the universe return change
    at = a.index.get_level_values("timestamp") == first_member
    assert not np.allclose(a.loc[at, XS[:7]].to_numpy(), b.loc[a.index[at], XS[:7]].to_numpy())
    first = fb[fb["timestamp"] == first_member].iloc[0]
    assert np.isfinite(first[XS[:7]].to_numpy(dtype=float)).all() and np.isnan(first["xs_beta"])
    # FB's beta/corr need beta_window of its own member rows
    assert fb["xs_beta"].notna().idxmax() - fb["xs_ret_rank"].notna().idxmax() == B - 1


# ---- universe return, beta, correlation --------------------------------------------------------------------

def test_universe_return_beta_and_corr_equal_a_plain_reference(stooq):
    """Also on days a symbol misses: its 2-day return pairs with the universe's 2 days (as-of cumulative)."""
    got = xs_of(stooq)
    ref = reference_inputs(stooq)
    members = ref[ref["member"]]
    u_t = {t: float(np.mean(rows["r1"].to_numpy())) for t, rows in members.groupby("timestamp")}
    times = sorted(u_t)
    cum, total = [], 0.0
    for t in times:
        total += u_t[t]
        cum.append(total)

    def cum_asof(t) -> float:
        if pd.isna(t):
            return 0.0
        i = bisect.bisect_right(times, t) - 1
        return cum[i] if i >= 0 else 0.0

    expected_u = ref["timestamp"].map(u_t).where(ref["member"])
    np.testing.assert_allclose(got["xs_universe_ret"].to_numpy(), expected_u.to_numpy(dtype=float), rtol=1e-10,
                               atol=1e-14)
    missing = {"CVX": pd.Timestamp("2010-11-19", tz="UTC"), "TRV": pd.Timestamp("2011-02-17", tz="UTC")}
    checked = 0
    for symbol, rows in members.groupby("symbol"):
        u = np.array([cum_asof(t) - cum_asof(p) for t, p in zip(rows["timestamp"], rows["prev"], strict=True)])
        r = rows["r1"].to_numpy()
        g = got.loc[rows.index]
        assert g["xs_beta"].iloc[: B - 1].isna().all() and g["xs_beta"].iloc[B - 1 :].notna().all()
        ends = list(range(B - 1, len(rows), 37))
        if symbol in missing:  # windows that contain the missed day
            after = int(rows["timestamp"].searchsorted(missing[symbol]))
            assert rows["timestamp"].iloc[after] > missing[symbol] > rows["prev"].iloc[after - 1]
            ends += [after, after + B // 2]
        for k in ends:
            x, y = r[k - B + 1 : k + 1], u[k - B + 1 : k + 1]
            cov = np.cov(x, y)
            assert g["xs_beta"].iloc[k] == pytest.approx(cov[0, 1] / cov[1, 1], rel=1e-6), (symbol, k)
            assert g["xs_corr"].iloc[k] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-6, abs=1e-9), (symbol, k)
            checked += 1
    assert checked > 40
    assert got["xs_corr"].dropna().between(-1, 1).all()


# ---- look-ahead across assets ------------------------------------------------------------------------------

def _non_label(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame if not c.startswith("label_")]


def _assert_same_up_to(full: pd.DataFrame, part: pd.DataFrame, t: pd.Timestamp, what: str) -> None:
    key = ["symbol", "timestamp"]
    a = full[full["timestamp"] <= t].set_index(key).sort_index()
    b = part[part["timestamp"] <= t].set_index(key).sort_index()
    assert a.index.equals(b.index), what
    cols = [c for c in _non_label(full) if c not in key]
    np.testing.assert_array_equal(a[cols].to_numpy(dtype=float), b[cols].to_numpy(dtype=float), err_msg=what)


def test_no_asset_looks_ahead_at_any_other_asset(lean):
    """Features of every asset at t equal those computed after removing one asset's, or all assets', bars after t:
    at cuts inside QQQ's and FB's warm-ups, at their entries, inside their beta warm-ups and later."""
    full = xs_of(lean)
    fb = full[full["symbol"] == "FB"]
    entry = fb.loc[fb["xs_ret_rank"].notna(), "timestamp"].min()
    times = pd.DatetimeIndex(lean["timestamp"].unique()).sort_values()
    at = int(times.searchsorted(entry))
    cuts = [times[i] for i in (300, at - 1, at, at + 20, at + B, len(times) - 40)]
    changed = 0
    for t in cuts:
        for symbol in [*pd.unique(lean["symbol"]), None]:
            drop = (lean["timestamp"] > t) & ((lean["symbol"] == symbol) if symbol else True)
            part = xs_of(lean[~drop])
            _assert_same_up_to(full, part, t, f"cut {t.date()}, future of {symbol or 'every asset'} removed")
            if symbol and symbol != "AAPL":  # removing one asset's future did change the others' later values
                key = ["symbol", "timestamp"]
                a = full[(full["timestamp"] > t) & (full["symbol"] != symbol)].set_index(key)[XS]
                b = part[part["timestamp"] > t].set_index(key)[XS].reindex(a.index)
                changed += int(not np.allclose(a.to_numpy(), b.to_numpy(), equal_nan=True))
    assert changed >= 10


# ---- the Ray Data preprocessing ----------------------------------------------------------------------------

def _small(lean: pd.DataFrame) -> pd.DataFrame:
    """Four symbols, about 430 bars each (QQQ a little fewer): enough for warm-up + beta window + some rows."""
    keep = lean["symbol"].isin(["AAPL", "IBM", "QQQ", "SPY"]) & (lean["timestamp"] < "2012-09-01")
    return lean[keep].reset_index(drop=True)


def test_preprocess_adds_the_xs_step_and_drops_only_incomplete_rows(ray_local, lean):
    bars = _small(lean)
    result = preprocess(bars, FEATURES, LABELS)
    per_symbol = feature_columns(FEATURES, cross_asset=True)
    assert result.cross_sectional and result.feature_columns == [*per_symbol, *XS]
    frame = result.frame
    labels = [c for c in frame if c.startswith("label_")]
    assert list(frame.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume",
                                   *result.feature_columns, *labels]
    assert not frame[result.feature_columns].isna().any().any()
    assert all(frame[c].dtype == np.float64 for c in result.feature_columns)

    own_all, _ = long_features(bars)
    expected = xs_of(bars).dropna(subset=[*per_symbol, *XS])  # the pure function, no Ray
    for symbol, rows in bars.groupby("symbol", sort=False):
        got = frame[frame["symbol"] == symbol].reset_index(drop=True)
        want = expected[expected["symbol"] == symbol].reset_index(drop=True)
        np.testing.assert_array_equal(got["timestamp"], want["timestamp"])
        np.testing.assert_allclose(got[result.feature_columns].to_numpy(), want[result.feature_columns].to_numpy(),
                                   rtol=1e-12, atol=1e-15)
        assert result.warmup_dropped[symbol] == len(rows) - len(got)
        # the symbol's own warm-up, then the first beta_window - 1 rows in the cross-section
        own = own_all[own_all["symbol"] == symbol]
        assert result.warmup_dropped[symbol] == int(own[per_symbol].isna().any(axis=1).sum()) + B - 1
        assert result.warmup_dropped[symbol] == cross_sectional_warmup(FEATURES, warmup_bars(FEATURES, True))
        assert (got["label_return"].iloc[: -LABELS.horizon].notna()).all()

    off = preprocess(bars, FEATURES.model_copy(update={"cross_sectional": False}), LABELS)
    assert not off.cross_sectional and off.feature_columns == per_symbol
    assert not any(c.startswith(("xs_", "_xs")) for c in off.frame)
    one = preprocess(bars[bars["symbol"] == "IBM"], FEATURES, LABELS)
    assert not one.cross_sectional and not any(c.startswith(("xs_", "_xs")) for c in one.frame)


def test_preprocess_has_no_cross_asset_look_ahead(ray_local, lean):
    """Through Ray Data: rows <= t of every asset are unchanged when one asset's or every asset's bars after t go."""
    bars = _small(lean)
    full = preprocess(bars, FEATURES, LABELS).frame
    t = pd.DatetimeIndex(full["timestamp"].unique()).sort_values()[40]
    for symbol in ("QQQ", None):
        drop = (bars["timestamp"] > t) & ((bars["symbol"] == symbol) if symbol else True)
        part = preprocess(bars[~drop].reset_index(drop=True), FEATURES, LABELS).frame
        _assert_same_up_to(full, part, t, f"future of {symbol or 'every asset'} removed")
