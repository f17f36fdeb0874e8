"""The serving replicas' per-symbol feature state (raytrade.serving.histories) on real bars and a real Redis server.

Two ``SymbolHistories`` stand for two replicas of the one-hop app sharing one online store: bars appended through
either must give, on both, exactly the rows ``compute_features`` gives over the whole history; a bad or repeated
bar must be refused (or skipped) without touching the shared bar log; without a store a replica must never compute
on a history with a hole.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from raytrade.config import FeatureConfig
from raytrade.errors import DataValidationError, InsufficientDataError
from raytrade.features import compute_features, warmup_bars
from raytrade.serving.histories import SymbolHistories
from raytrade.store import FeaturesNotFoundError, OnlineFeatureStore

CFG = FeatureConfig()
LOOKBACK = 16
MIN_BARS = warmup_bars(CFG) + LOOKBACK


@pytest.fixture
def bars(btc_bars) -> pd.DataFrame:
    return btc_bars.iloc[: MIN_BARS + 60].reset_index(drop=True)


@pytest.fixture
def store(redis_server):
    s = OnlineFeatureStore(redis_server, feature_set_version="fs-test", prefix=f"h{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def _expected(bars: pd.DataFrame, upto: int) -> pd.DataFrame:
    """The batch rows over bars[:upto]: the last LOOKBACK rows, with timestamp."""
    feats = compute_features(bars.iloc[:upto], CFG)
    return feats.iloc[-LOOKBACK:][["timestamp", *feats.columns[7:]]].reset_index(drop=True)


def test_two_replicas_sharing_a_store_compute_the_batch_rows_bit_for_bit(bars, store):
    a, b = (SymbolHistories(CFG, LOOKBACK, MIN_BARS, store) for _ in range(2))
    rows, ts = a.rows("BTC/USD", bars.iloc[:MIN_BARS])  # a full history opens the state and the log
    pd.testing.assert_frame_equal(rows, _expected(bars, MIN_BARS), check_exact=True)
    states = set()
    for i in range(MIN_BARS, len(bars)):
        run = 3 if i < MIN_BARS + 30 else 10  # runs of 3 bars through one replica, then of 10 (a longer catch-up)
        replica = (a, b)[((i - MIN_BARS) // run) % 2]
        rows, ts = replica.rows("BTC/USD", bars.iloc[i : i + 1])
        assert ts == bars["timestamp"].iloc[i]
        pd.testing.assert_frame_equal(rows, _expected(bars, i + 1), check_exact=True)
        states.add(id(replica._held["BTC/USD"]))
    assert len(states) == 2  # each replica caught up with the other's bars; neither rebuilt after its first bar
    assert a.counts["opened"] == 1 and a.counts["rebuilt"] == 0 and b.counts["rebuilt"] == 1
    assert a.counts["caught_up"] + b.counts["caught_up"] > 0
    # a symbol-only request reads the log's last bar, on either replica
    for replica in (a, b):
        rows, ts = replica.latest("BTC/USD")
        assert ts == bars["timestamp"].iloc[-1]
        pd.testing.assert_frame_equal(rows, _expected(bars, len(bars)), check_exact=True)
    assert store.read_bars("BTC/USD")["timestamp"].iloc[-1] == bars["timestamp"].iloc[-1]


def test_resent_bars_are_skipped_and_bad_bars_leave_the_log_untouched(bars, store):
    h = SymbolHistories(CFG, LOOKBACK, MIN_BARS, store)
    h.rows("BTC/USD", bars.iloc[:MIN_BARS])
    first, _ = h.rows("BTC/USD", bars.iloc[MIN_BARS : MIN_BARS + 1])
    again, _ = h.rows("BTC/USD", bars.iloc[MIN_BARS : MIN_BARS + 1])  # a retried request
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    log = store.read_bars("BTC/USD")
    nxt = bars.iloc[MIN_BARS + 1 : MIN_BARS + 2].copy()
    changed = bars.iloc[MIN_BARS : MIN_BARS + 1].assign(close=lambda f: f["close"] * 1.01,
                                                        high=lambda f: f["high"] * 1.01)
    older = bars.iloc[MIN_BARS - 5 : MIN_BARS - 4].assign(close=lambda f: f["close"] * 1.01,
                                                          high=lambda f: f["high"] * 1.01)
    broken = nxt.assign(high=nxt["low"] * 0.5)
    for frame, rule in ((changed, "duplicate_timestamp"), (older, "unsorted_timestamps"), (broken, "ohlc_relation")):
        with pytest.raises(DataValidationError) as err:
            h.rows("BTC/USD", frame)
        assert err.value.rule == rule
        assert err.value.symbol == "BTC/USD"
    pd.testing.assert_frame_equal(store.read_bars("BTC/USD"), log)  # nothing reached the shared log
    rows, _ = h.rows("BTC/USD", nxt)  # and the next good bar still gets the batch rows
    pd.testing.assert_frame_equal(rows, _expected(bars, MIN_BARS + 2), check_exact=True)


def test_without_a_store_a_replica_refuses_a_history_with_a_hole(bars):
    a, b = SymbolHistories(CFG, LOOKBACK, MIN_BARS), SymbolHistories(CFG, LOOKBACK, MIN_BARS)
    with pytest.raises(InsufficientDataError, match=f"at least {MIN_BARS} bars"):
        a.rows("BTC/USD", bars.iloc[MIN_BARS : MIN_BARS + 1])
    a.rows("BTC/USD", bars.iloc[:MIN_BARS])
    b.rows("BTC/USD", bars.iloc[:MIN_BARS])
    a.rows("BTC/USD", bars.iloc[MIN_BARS - 1 : MIN_BARS + 1])  # overlaps the last bar held: appended
    # b missed bar MIN_BARS: the next bar alone would leave a hole, so it is refused, naming the rule
    with pytest.raises(DataValidationError) as err:
        b.rows("BTC/USD", bars.iloc[MIN_BARS + 1 : MIN_BARS + 2])
    assert err.value.rule == "history_gap" and err.value.symbol == "BTC/USD"
    # sent from the bar b holds, the same bars give the batch rows on b too
    rows, _ = b.rows("BTC/USD", bars.iloc[MIN_BARS - 1 : MIN_BARS + 2])
    pd.testing.assert_frame_equal(rows, _expected(bars, MIN_BARS + 2), check_exact=True)
    with pytest.raises(FeaturesNotFoundError):
        a.latest("BTC/USD")


def test_the_log_must_hold_a_full_history_before_bars_are_appended(bars, store):
    h = SymbolHistories(CFG, LOOKBACK, MIN_BARS, store)
    store.write_bars("BTC/USD", bars.iloc[: MIN_BARS - 10], max_bars=4096)
    with pytest.raises(InsufficientDataError, match=f"holds {MIN_BARS - 9} bars"):
        h.rows("BTC/USD", bars.iloc[MIN_BARS - 10 : MIN_BARS - 9])
    assert np.isfinite(h.rows("BTC/USD", bars.iloc[:MIN_BARS])[0].iloc[:, 1:].to_numpy()).all()


def test_a_replica_keeps_at_most_max_symbols_states_and_rebuilds_a_dropped_one_from_the_log(bars, store):
    h = SymbolHistories(CFG, LOOKBACK, MIN_BARS, store, max_symbols=2)
    for name in ("A", "B", "C"):
        h.rows(name, bars.iloc[:MIN_BARS])
    assert len(h) == 2 and "A" not in h._held  # the least recently used went first
    rows, _ = h.rows("A", bars.iloc[MIN_BARS : MIN_BARS + 1])  # rebuilt from A's bar log, then appended
    pd.testing.assert_frame_equal(rows, _expected(bars, MIN_BARS + 1), check_exact=True)
    assert len(h) == 2 and "B" not in h._held
