"""Ingestion: discovering and reading many files, the partitioned Parquet store, and the ccxt connector
against a local fake Binance (real HTTP, real ccxt parsing, real Coinbase BTC/USD bars)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import ccxt
import pandas as pd
import pyarrow.dataset as ds
import pytest
import requests

from conftest import BUNDLED, shared
from fake_exchange import FakeBinance
from raytrade.data.exchange import ExchangeError, fetch_ohlcv_history, ingest_exchange, make_exchange
from raytrade.data.ingest import discover, last_timestamps, read_many, write_partitioned
from raytrade.data.readers import read_bars
from raytrade.data.schema import BAR_COLUMNS
from raytrade.data.validation import validate_bars
from raytrade.errors import ConfigError, DataValidationError

HOUR_MS = 3_600_000


def _ns(bars: pd.DataFrame) -> pd.DataFrame:
    """read_many's canonical dtypes: read_bars parses CSV timestamps at us, Yahoo volume as int64."""
    return bars.assign(timestamp=bars.timestamp.astype("datetime64[ns, UTC]"), volume=bars.volume.astype(float))


@pytest.fixture(scope="module")
def source_bars() -> pd.DataFrame:
    """The bundled real Coinbase BTC/USD hourly bars (20,111 rows), exactly as stored."""
    return pd.read_parquet(BUNDLED)


@pytest.fixture(scope="module")
def fake_server(source_bars: pd.DataFrame):
    fake = FakeBinance()
    fake.add_bars(source_bars, market_id="BTCUSD", base="BTC", quote="USD", interval="1h")
    with fake.serve():
        yield fake


@pytest.fixture
def fake(fake_server: FakeBinance) -> FakeBinance:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def exchange(fake: FakeBinance) -> ccxt.binance:
    """A real ccxt.binance pointed at the fake server, markets loaded from it; request log cleared."""
    ex = fake.ccxt_exchange()
    ex.load_markets()
    assert "BTC/USD" in ex.markets
    fake.reset()
    return ex


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def _start_times(fake: FakeBinance) -> list[int]:
    return [int(r.params["startTime"]) for r in fake.klines_requests()]


# ------------------------------------------------------------------------------------- ccxt connector
def test_paginated_fetch_equals_source_bars(exchange, fake, source_bars):
    want = source_bars.iloc[1000:3437].reset_index(drop=True)  # 2,437 bars: 5 pages, the last one cut by `until`
    pages = []
    got = fetch_ohlcv_history(exchange, "BTC/USD", "1h", since=want.timestamp.iloc[0],
                              until=want.timestamp.iloc[-1] + pd.Timedelta(hours=1), limit=500,
                              progress=lambda sym, n, last: pages.append((sym, n, last)))
    pd.testing.assert_frame_equal(got, want)
    assert list(got.columns) == list(BAR_COLUMNS)
    validate_bars(got)
    requests = fake.klines_requests()
    assert [r.params["limit"] for r in requests] == ["500"] * 5
    assert {r.params["symbol"] for r in requests} == {"BTCUSD"} and {r.params["interval"] for r in requests} == {"1h"}
    starts = _start_times(fake)
    assert starts[0] == _ms(want.timestamp.iloc[0])
    assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == [500 * HOUR_MS] * 4  # last + 1h
    assert pages[-1] == ("BTC/USD", len(want), want.timestamp.iloc[-1])


def test_fetch_stops_at_short_page_and_page_edges_are_deduplicated(exchange, fake, source_bars):
    want = source_bars.iloc[-700:].reset_index(drop=True)
    got = fetch_ohlcv_history(exchange, "BTC/USD", "1h", since=want.timestamp.iloc[0], limit=500)
    pd.testing.assert_frame_equal(got, want)
    assert len(fake.klines_requests()) == 2  # 500 + 200 (short: no more bars)

    class Overlapping:  # an exchange whose pages repeat the previous page's last bar
        id, enableRateLimit, rateLimit, timeframes, features = "overlap", True, 0, {"1h": "1h"}, {}
        parse_timeframe = staticmethod(ccxt.Exchange.parse_timeframe)

        def load_markets(self):
            return {}

        def market(self, symbol):
            return {"type": "spot"}

        def fetch_ohlcv(self, symbol, timeframe, since, limit):
            return exchange.fetch_ohlcv(symbol, timeframe, since=since - HOUR_MS if since > first else since,
                                        limit=limit)

    first = _ms(want.timestamp.iloc[0])
    got = fetch_ohlcv_history(Overlapping(), "BTC/USD", "1h", since=want.timestamp.iloc[0], limit=300)
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_transient_errors_succeeds_with_exponential_backoff(exchange, fake, source_bars, status):
    want = source_bars.iloc[5000:5300].reset_index(drop=True)
    fake.fail_next(2, status=status)
    sleeps: list[float] = []
    got = fetch_ohlcv_history(exchange, "BTC/USD", "1h", since=want.timestamp.iloc[0],
                              until=want.timestamp.iloc[-1] + pd.Timedelta(hours=1), limit=500,
                              backoff_s=0.25, sleep=sleeps.append)
    pd.testing.assert_frame_equal(got, want)
    assert sleeps == [0.25, 0.5]  # backoff_s * 2**attempt
    requests = fake.klines_requests()
    assert [r.status for r in requests] == [status, status, 200]
    assert len(set(_start_times(fake))) == 1  # the same page was retried


def test_failure_after_max_retries_raises_exchange_error(exchange, fake, source_bars):
    since = source_bars.timestamp.iloc[100]
    fake.fail_next(10, status=429)
    sleeps: list[float] = []
    with pytest.raises(ExchangeError) as info:
        fetch_ohlcv_history(exchange, "BTC/USD", "1h", since=since, limit=500, max_retries=3, backoff_s=1.0,
                            sleep=sleeps.append)
    err = info.value
    assert "BTC/USD" in str(err) and "binance" in str(err) and since.isoformat() in str(err)
    assert (err.exchange, err.symbol, err.since) == ("binance", "BTC/USD", since)
    assert isinstance(err.__cause__, ccxt.NetworkError)
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(fake.klines_requests()) == 4  # 1 + max_retries attempts


def test_unknown_symbol_is_a_data_validation_error(exchange, fake):
    with pytest.raises(DataValidationError) as info:
        fetch_ohlcv_history(exchange, "DOGE/USD", "1h", since=pd.Timestamp("2018-01-01", tz="UTC"))
    assert info.value.rule == "unknown_symbol" and info.value.symbol == "DOGE/USD"
    assert fake.klines_requests() == []
    # the server side answers an unknown market id the way Binance does, which ccxt maps to BadSymbol
    with pytest.raises(ccxt.BadSymbol):
        exchange.publicGetKlines({"symbol": "DOGEUSD", "interval": "1h"})


def test_requests_respect_the_exchange_rate_limit(fake, source_bars):
    ex = fake.ccxt_exchange(rateLimit=250)  # ccxt spaces spot klines by rateLimit * cost 0.4 = 100 ms
    ex.load_markets()
    sent: list[float] = []

    class Recording(requests.adapters.HTTPAdapter):  # client-side send times (server arrival times jitter)
        def send(self, request, **kwargs):
            sent.append(time.monotonic())
            return super().send(request, **kwargs)

    ex.session.mount("http://", Recording())
    fake.reset()
    fetch_ohlcv_history(ex, "BTC/USD", "1h", since=source_bars.timestamp.iloc[0], limit=100,
                        until=source_bars.timestamp.iloc[300])
    assert len(fake.klines_requests()) == len(sent) == 3
    # ccxt's token-bucket throttler runs on its own millisecond clock: on a loaded machine a gap came out at 94.95 ms,
    # so allow 10 ms of slack (unthrottled requests to the local server are a few ms apart)
    assert min(b - a for a, b in zip(sent, sent[1:], strict=False)) >= 0.09

    ex.enableRateLimit = False  # then the fetcher waits rateLimit between pages itself
    sleeps: list[float] = []
    fetch_ohlcv_history(ex, "BTC/USD", "1h", since=source_bars.timestamp.iloc[0], limit=100,
                        until=source_bars.timestamp.iloc[300], sleep=sleeps.append)
    assert sleeps == [0.25, 0.25]


def test_ingest_twice_fetches_only_new_bars_without_duplicates(exchange, fake, source_bars, tmp_path):
    store = tmp_path / "store"
    ts = source_bars.timestamp
    first = ingest_exchange(exchange, ["BTC/USD"], "1h", store, since=ts.iloc[2000], until=ts.iloc[3200], limit=500)
    assert first == {"BTC/USD": 1200}
    assert last_timestamps(store) == {"BTC/USD": ts.iloc[3199]}

    fake.reset()
    second = ingest_exchange(exchange, ["BTC/USD"], "1h", store, since=ts.iloc[2000], until=ts.iloc[3900], limit=500)
    assert second == {"BTC/USD": 700}
    assert _start_times(fake)[0] == _ms(ts.iloc[3199]) + HOUR_MS  # resumed at last stored + 1h
    assert len(fake.klines_requests()) == 2

    stored = read_many(store)
    validate_bars(stored)  # includes no duplicate timestamps
    pd.testing.assert_frame_equal(stored, source_bars.iloc[2000:3900].reset_index(drop=True))
    assert len(list((store / "symbol=BTC%2FUSD").glob("*.parquet"))) == 2  # appended, not rewritten

    fake.reset()
    assert ingest_exchange(exchange, ["BTC/USD"], "1h", store, since=ts.iloc[2000], until=ts.iloc[3900]) == {
        "BTC/USD": 0}
    assert fake.klines_requests() == []


def test_make_exchange_enables_rate_limit():
    ex = make_exchange("binance", timeout=1234)
    assert ex.enableRateLimit is True and ex.timeout == 1234 and ex.id == "binance"
    assert make_exchange("kraken", enableRateLimit=False).enableRateLimit is False
    with pytest.raises(ConfigError, match="nosuchexchange"):
        make_exchange("nosuchexchange")


# ------------------------------------------------------------------------------- files and the store
@pytest.fixture
def raw_dir(tmp_path: Path, source_bars: pd.DataFrame) -> Path:
    """raw/2017.parquet (canonical, has a symbol column), raw/sub/BTC-USD.csv (no symbol column),
    raw/sub/GOOGL.csv (Yahoo layout) and a README that is not data."""
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    source_bars.iloc[:300].to_parquet(raw / "2017.parquet", index=False)
    source_bars.iloc[300:500].drop(columns="symbol").to_csv(raw / "sub" / "BTC-USD.csv", index=False)
    shutil.copy(shared("gymanytrading_googl_1d_yahoo.csv"), raw / "sub" / "GOOGL.csv")
    (raw / "README.md").write_text("not data\n")
    return raw


def test_read_many_directory_glob_and_single_file(raw_dir, source_bars):
    assert [p.relative_to(raw_dir).as_posix() for p in discover(raw_dir)] == [
        "2017.parquet", "sub/BTC-USD.csv", "sub/GOOGL.csv"]

    bars = read_many(raw_dir)
    googl = _ns(read_bars(raw_dir / "sub" / "GOOGL.csv"))
    assert list(bars.columns) == [*BAR_COLUMNS, "adj_close"]
    assert bars.symbol.tolist() == ["BTC/USD"] * 300 + ["BTC-USD"] * 200 + ["GOOGL"] * len(googl)  # file order
    assert str(bars.timestamp.dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_frame_equal(bars.iloc[:300][list(BAR_COLUMNS)], source_bars.iloc[:300])
    assert bars.timestamp.iloc[300:500].tolist() == source_bars.timestamp.iloc[300:500].tolist()
    assert bars.close.iloc[300:500].tolist() == source_bars.close.iloc[300:500].tolist()
    assert bars.timestamp.iloc[500:].tolist() == googl.timestamp.tolist()  # rows keep their file order
    validate_bars(bars)

    by_glob = read_many(str(raw_dir / "**" / "*.csv"))
    assert by_glob.symbol.unique().tolist() == ["BTC-USD", "GOOGL"]
    assert len(by_glob) == 200 + len(googl)

    single = read_many(raw_dir / "sub" / "BTC-USD.csv")
    pd.testing.assert_frame_equal(single, _ns(read_bars(raw_dir / "sub" / "BTC-USD.csv")))
    assert read_many(raw_dir / "sub" / "BTC-USD.csv", symbol="BTC/USD").symbol.unique().tolist() == ["BTC/USD"]
    only_googl = read_many(raw_dir, symbol="GOOGL")
    pd.testing.assert_frame_equal(only_googl, googl)
    with pytest.raises(DataValidationError) as info:
        read_many(raw_dir, symbol="ETH/USD")
    assert info.value.rule == "unknown_symbol"


def test_partitioned_round_trip_keeps_symbols_exactly(tmp_path, source_bars):
    dji = pd.read_parquet(shared("finrl_dji_1d.parquet"))
    btc = source_bars.iloc[:1000].reset_index(drop=True)
    assert dji.symbol.unique().tolist() == ["^DJI"]
    store = tmp_path / "store"
    files = write_partitioned(pd.concat([btc, dji], ignore_index=True), store)
    assert [f.parent.name for f in files] == ["symbol=BTC%2FUSD", "symbol=%5EDJI"]

    back = read_many(store)  # symbol comes from the partition directory
    assert set(back.symbol) == {"BTC/USD", "^DJI"}
    for want in (btc, dji):
        got = back[back.symbol == want.symbol.iloc[0]].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)
    pd.testing.assert_frame_equal(read_many(files[0]), btc)  # a single partition file too
    pd.testing.assert_frame_equal(read_many(store, symbol="BTC/USD"), btc)

    # the layout is plain Hive: pyarrow decodes the same symbols
    table = ds.dataset(store, format="parquet", partitioning="hive").to_table()
    assert sorted(set(table.column("symbol").to_pylist())) == ["BTC/USD", "^DJI"]
    assert last_timestamps(store) == {"BTC/USD": btc.timestamp.iloc[-1], "^DJI": dji.timestamp.iloc[-1]}


def test_write_partitioned_append_and_overwrite(tmp_path, source_bars):
    store = tmp_path / "store"
    assert last_timestamps(store) == {}
    a, b = source_bars.iloc[:100], source_bars.iloc[100:150]
    write_partitioned(a, store, mode="append")
    write_partitioned(b, store, mode="append")
    part = store / "symbol=BTC%2FUSD"
    assert len(list(part.glob("*.parquet"))) == 2
    pd.testing.assert_frame_equal(read_many(store), source_bars.iloc[:150].reset_index(drop=True))

    renamed = b.assign(symbol="BTC/EUR")
    write_partitioned(renamed, store, mode="append")
    files = write_partitioned(a, store)  # overwrite: only BTC/USD's partition is replaced
    assert list(part.glob("*.parquet")) == files
    pd.testing.assert_frame_equal(read_many(store, symbol="BTC/USD"), a.reset_index(drop=True))
    assert last_timestamps(store)["BTC/EUR"] == b.timestamp.iloc[-1]
    with pytest.raises(DataValidationError) as info:
        write_partitioned(a.assign(symbol=""), store)
    assert info.value.rule == "empty_symbol"


def test_discover_raises_when_nothing_matches(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for source in (tmp_path / "missing.csv", tmp_path / "empty", str(tmp_path / "*.parquet"), str(tmp_path / "*")):
        with pytest.raises(DataValidationError, match="file_not_found") as info:
            discover(source)
        assert info.value.rule == "file_not_found" and str(source) in str(info.value)
    with pytest.raises(DataValidationError, match="file_not_found"):
        read_many(tmp_path / "missing_dir")
