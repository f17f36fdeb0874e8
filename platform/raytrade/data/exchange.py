"""OHLCV history from crypto exchanges through ccxt, paginated, retried and resumable.

:func:`fetch_ohlcv_history` pages through ``exchange.fetch_ohlcv`` and returns the canonical bar
schema of :mod:`raytrade.data.schema`; :func:`ingest_exchange` appends new bars to the Hive-partitioned
store of :mod:`raytrade.data.ingest`, resuming after the last stored bar of each symbol.

Transient failures (``ccxt.NetworkError`` and its subclasses ``RateLimitExceeded``, ``DDoSProtection``,
``ExchangeNotAvailable``, ``RequestTimeout``) are retried with exponential backoff; what still fails is
raised as :class:`ExchangeError`. Unknown symbols raise
:class:`~raytrade.errors.DataValidationError` with rule ``unknown_symbol``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import ccxt
import pandas as pd

from raytrade.data.ingest import last_timestamps, write_partitioned
from raytrade.data.schema import BAR_COLUMNS, OHLCV_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.data.validation import validate_bars
from raytrade.errors import ConfigError, DataValidationError, RaytradeError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ccxt errors worth retrying (all are ``ccxt.NetworkError`` subclasses; listed for the reader)
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    ccxt.NetworkError, ccxt.RateLimitExceeded, ccxt.ExchangeNotAvailable, ccxt.RequestTimeout,
)
#: ``progress(symbol, bars fetched so far, open time of the last bar fetched)`` after every page
ProgressCallback = Callable[[str, int, pd.Timestamp], None]


class ExchangeError(RaytradeError):
    """An exchange request failed (after the allowed retries, or with a non-retryable error).

    Attributes:
        exchange: ccxt exchange id (e.g. ``"binance"``).
        symbol: unified symbol requested (e.g. ``"BTC/USDT"``), or ``None``.
        since: start (UTC) of the page that failed, or ``None``.
    """

    def __init__(self, message: str, *, exchange: str, symbol: str | None = None,
                 since: pd.Timestamp | None = None) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.since = since
        super().__init__(message)


def make_exchange(exchange_id: str, **config: Any) -> ccxt.Exchange:
    """Construct a synchronous ccxt exchange with its rate limiter on.

    Args:
        exchange_id: ccxt id, e.g. ``"binance"``, ``"coinbase"``, ``"kraken"`` (see ``ccxt.exchanges``).
        **config: ccxt constructor options (``apiKey``, ``timeout`` in ms, ``options``, ...);
            ``enableRateLimit`` defaults to ``True``.

    Raises:
        ConfigError: ``exchange_id`` is not a ccxt exchange.
    """
    if exchange_id not in ccxt.exchanges:
        raise ConfigError(f"exchange: unknown ccxt exchange id {exchange_id!r} (see ccxt.exchanges)")
    return getattr(ccxt, exchange_id)({"enableRateLimit": True, **config})


def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _to_ms(ts: pd.Timestamp) -> int:
    return int(ts.as_unit("ns").value // 1_000_000)


def _from_ms(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def timeframe_ms(exchange: ccxt.Exchange, timeframe: str) -> int:
    """Length of one bar of ``timeframe`` in milliseconds (ccxt's ``parse_timeframe``; ``1M`` = 30 days).

    Raises:
        ConfigError: the exchange does not offer ``timeframe``, or it is not a ccxt timeframe.
    """
    offered = getattr(exchange, "timeframes", None) or {}
    if offered and timeframe not in offered:
        raise ConfigError(f"timeframe: {exchange.id} has no timeframe {timeframe!r}; choose one of {list(offered)}")
    try:
        return int(exchange.parse_timeframe(timeframe) * 1000)
    except (ValueError, TypeError, IndexError) as err:
        raise ConfigError(f"timeframe: {timeframe!r} is not a ccxt timeframe such as '1m', '1h', '1d'") from err


def _next_since_ms(last_ms: int, timeframe: str, step_ms: int) -> int:
    """Start of the bar after the one opening at ``last_ms``.

    Calendar months/years have no fixed length, so for them the next request starts 1 ms after the
    last bar (the exchange returns bars opening at or after ``since``); otherwise one timeframe later.
    """
    return last_ms + 1 if timeframe[-1:] in ("M", "y") else last_ms + step_ms


def _page_limit(exchange: ccxt.Exchange, symbol: str, limit: int) -> int:
    """``limit`` capped at the exchange's own page size, so a short page really means "no more bars"."""
    try:
        market = exchange.market(symbol)
        features = exchange.features.get(market["type"]) or {}
        if market["type"] in ("swap", "future"):
            features = features.get("linear" if market.get("linear") else "inverse") or {}
        cap = (features.get("fetchOHLCV") or {}).get("limit")
    except (AttributeError, KeyError, TypeError):
        cap = None
    return min(limit, int(cap)) if cap else limit


def _call(
    exchange: ccxt.Exchange, what: Callable[[], T], *, symbol: str, since: pd.Timestamp | None,
    max_retries: int, backoff_s: float, sleep: Callable[[float], Any],
) -> T:
    """Run one exchange request, retrying transient errors ``max_retries`` times with exponential backoff."""
    where = f"{exchange.id} {symbol!r}" + (f" since {since.isoformat()}" if since is not None else "")
    for attempt in range(max_retries + 1):
        try:
            return what()
        except ccxt.BadSymbol as err:
            raise DataValidationError("unknown_symbol", f"{exchange.id} does not list symbol {symbol!r}: {err}",
                                      column=SYMBOL, symbol=symbol) from err
        except RETRYABLE_ERRORS as err:
            if attempt >= max_retries:
                raise ExchangeError(
                    f"{where}: request failed after {max_retries} retries: {type(err).__name__}: {err}",
                    exchange=exchange.id, symbol=symbol, since=since,
                ) from err
            delay = backoff_s * 2**attempt
            log.warning("%s: %s (%s); retry %d/%d in %.3g s", where, type(err).__name__, err, attempt + 1,
                        max_retries, delay)
            sleep(delay)
        except ccxt.BaseError as err:
            raise ExchangeError(f"{where}: request failed: {type(err).__name__}: {err}",
                                exchange=exchange.id, symbol=symbol, since=since) from err
    raise AssertionError("unreachable")  # pragma: no cover


def _frame(rows: list[list[Any]], symbol: str) -> pd.DataFrame:
    frame = pd.DataFrame([row[:6] for row in rows], columns=[TIMESTAMP, *OHLCV_COLUMNS])
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP].astype("int64"), unit="ms", utc=True).astype(
        "datetime64[ns, UTC]"
    )
    for col in OHLCV_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame.insert(1, SYMBOL, symbol)
    return frame[list(BAR_COLUMNS)]


def fetch_ohlcv_history(
    exchange: ccxt.Exchange,
    symbol: str,
    timeframe: str,
    since: pd.Timestamp,
    until: pd.Timestamp | None = None,
    limit: int = 1000,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    sleep: Callable[[float], Any] = time.sleep,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Fetch all bars of one symbol from ``since`` (inclusive) to ``until`` (exclusive), page by page.

    Calls ``exchange.fetch_ohlcv(symbol, timeframe, since=<ms>, limit=<page>)`` repeatedly, each time
    starting one timeframe after the last bar received, and stops at ``until``, at an empty page or at
    a page shorter than the page size (``limit`` capped at the exchange's documented maximum). Bars
    repeated at page edges are dropped (first kept). Markets are loaded first if needed.

    Rate limit: with ``exchange.enableRateLimit`` (the default of ccxt and :func:`make_exchange`) ccxt
    spaces the requests itself; if it is off, this function waits ``exchange.rateLimit`` ms between pages.

    Args:
        exchange: a synchronous ccxt exchange.
        symbol: ccxt unified symbol, e.g. ``"BTC/USDT"``; also the ``symbol`` column of the result.
        timeframe: ccxt timeframe, e.g. ``"1m"``, ``"1h"``, ``"1d"``.
        since: first bar open time wanted (naive = UTC).
        until: stop before this bar open time (naive = UTC); ``None`` = up to the newest bar, which
            may still be forming.
        limit: bars requested per page.
        max_retries: retries per request for transient errors (``max_retries + 1`` attempts in all).
        backoff_s: wait before retry ``k`` (0-based) is ``backoff_s * 2**k`` seconds.
        sleep: called with the wait in seconds (inject a recorder in tests).
        progress: called after every non-empty page, see :data:`ProgressCallback`.

    Returns:
        Canonical bars (``timestamp`` datetime64[ns, UTC] at bar open from ccxt's ms, ``symbol``,
        float64 ``open``/``high``/``low``/``close`` in quote currency, ``volume`` in base units as the
        exchange reports it), in exchange order, possibly empty. Not validated.

    Raises:
        DataValidationError: rule ``unknown_symbol`` when the exchange does not list ``symbol``.
        ExchangeError: a request still failed after ``max_retries`` retries, or failed with a
            non-retryable ccxt error; names the exchange, the symbol and the ``since`` of that page.
        ConfigError: ``timeframe`` is not offered by the exchange.
        ValueError: ``limit < 1`` or ``max_retries < 0``.
    """
    if limit < 1 or max_retries < 0:
        raise ValueError(f"need limit >= 1 and max_retries >= 0, got limit={limit}, max_retries={max_retries}")
    step_ms = timeframe_ms(exchange, timeframe)
    start = _utc(since)
    end_ms = _to_ms(_utc(until)) if until is not None else None
    retry = {"symbol": symbol, "max_retries": max_retries, "backoff_s": backoff_s, "sleep": sleep}
    _call(exchange, exchange.load_markets, since=start, **retry)
    _call(exchange, lambda: exchange.market(symbol), since=start, **retry)  # BadSymbol -> unknown_symbol
    page_size = _page_limit(exchange, symbol, limit)

    cursor = _to_ms(start)
    rows: list[list[Any]] = []
    pages = 0
    while end_ms is None or cursor < end_ms:
        if pages and not exchange.enableRateLimit:
            sleep(exchange.rateLimit / 1000)  # ccxt's own limiter is off: space the pages ourselves
        page_since = cursor
        page = _call(exchange, partial(exchange.fetch_ohlcv, symbol, timeframe, since=page_since, limit=page_size),
                     since=_from_ms(page_since), **retry)
        pages += 1
        if not page:
            break
        rows.extend(row for row in page if row[0] >= page_since and (end_ms is None or row[0] < end_ms))
        last_ms = int(max(row[0] for row in page))
        if progress is not None and rows:
            progress(symbol, len(rows), _from_ms(int(rows[-1][0])))
        next_cursor = _next_since_ms(last_ms, timeframe, step_ms)
        if len(page) < page_size or next_cursor <= cursor:
            break
        cursor = next_cursor
    bars = _frame(rows, symbol)
    return bars.drop_duplicates(TIMESTAMP, keep="first").reset_index(drop=True)


def ingest_exchange(
    exchange: ccxt.Exchange,
    symbols: list[str],
    timeframe: str,
    out_dir: str | Path,
    since: pd.Timestamp,
    until: pd.Timestamp | None = None,
    **fetch_kwargs: Any,
) -> dict[str, int]:
    """Fetch new bars of each symbol and append them to a Hive-partitioned Parquet store.

    For each symbol the fetch starts one timeframe after its last stored bar (see
    :func:`~raytrade.data.ingest.last_timestamps`), or at ``since`` when the store has none, so running
    it again only adds bars that are new; bars at or before the last stored one are never written twice.
    Bars still forming (open time + timeframe after the exchange clock) are not stored, so the next run
    fetches them complete. Fetched bars are validated before they are written.

    Args:
        exchange: a synchronous ccxt exchange.
        symbols: ccxt unified symbols; each is the partition ``symbol=<uri-encoded>/`` of ``out_dir``.
        timeframe: ccxt timeframe, e.g. ``"1h"``.
        out_dir: root of the store (created if missing).
        since: start (UTC; naive = UTC) for symbols not yet stored.
        until: stop before this bar open time (UTC), or ``None`` for up to now.
        **fetch_kwargs: passed to :func:`fetch_ohlcv_history` (``limit``, ``max_retries``, ``backoff_s``,
            ``sleep``, ``progress``).

    Returns:
        ``{symbol: number of bars written}`` (0 when up to date), in ``symbols`` order.

    Raises:
        DataValidationError: ``unknown_symbol``, or a fetched bar breaks a rule of
            :func:`~raytrade.data.validation.validate_bars` (nothing is written for that symbol).
        ExchangeError: see :func:`fetch_ohlcv_history`; symbols done before it stay written.
        ConfigError: ``timeframe`` is not offered by the exchange.
    """
    out_dir = Path(out_dir)
    step_ms = timeframe_ms(exchange, timeframe)
    stored = last_timestamps(out_dir)
    written: dict[str, int] = {}
    for symbol in symbols:
        last = stored.get(symbol)
        start = _from_ms(_next_since_ms(_to_ms(last), timeframe, step_ms)) if last is not None else _utc(since)
        if until is not None and start >= _utc(until):
            written[symbol] = 0
            continue
        bars = fetch_ohlcv_history(exchange, symbol, timeframe, start, until, **fetch_kwargs)
        now_ms = int(exchange.milliseconds())
        keep = bars[TIMESTAMP] + pd.Timedelta(milliseconds=step_ms) <= _from_ms(now_ms)
        if last is not None:
            keep &= bars[TIMESTAMP] > last
        bars = bars[keep].reset_index(drop=True)
        if len(bars):
            validate_bars(bars)
            write_partitioned(bars, out_dir, mode="append")
        log.info("%s %s %s: %d new bars", exchange.id, symbol, timeframe, len(bars))
        written[symbol] = len(bars)
    return written
