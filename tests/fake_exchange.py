"""A local fake of Binance's public spot REST API, serving real bars over real HTTP.

It speaks the wire format ccxt's ``binance`` class expects (``GET /api/v3/exchangeInfo``,
``GET /api/v3/klines?symbol=BTCUSD&interval=1h&startTime=<ms>&endTime=<ms>&limit=<n>``, klines as
arrays of ``[openTime, "open", "high", "low", "close", "volume", closeTime, "quoteVolume", trades,
"takerBuyBase", "takerBuyQuote", "0"]``, errors as ``{"code": -1121, "msg": "Invalid symbol."}``),
so a real ``ccxt.binance`` object pointed at it goes through its whole request/parse/error path.

The bars are real (e.g. the bundled Coinbase BTC/USD hourly file); only the venue is fake. Fields that
the bar files lack are derived: ``quoteVolume`` = volume * close (an approximation), trade counts and
taker volumes = 0. The server can be told to fail the next N requests with an HTTP status (429 and 503
as Binance sends them) and it records every request (path, query, arrival time) for assertions.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import ccxt
import pandas as pd

#: Binance interval -> bar length in ms (only intervals for which the server has bars are served)
INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000}
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000  # Binance spot /api/v3/klines


@dataclass(frozen=True)
class Recorded:
    """One request the fake exchange received."""

    path: str
    params: dict[str, str]
    at: float  # time.monotonic() on arrival, seconds
    status: int = 200


@dataclass
class _Market:
    market_id: str
    base: str
    quote: str
    interval: str
    open_ms: list[int]
    klines: list[list[Any]]


def _fmt(x: float) -> str:
    """Binance's 8-decimal strings, falling back to repr when 8 decimals would not round-trip exactly."""
    s = f"{x:.8f}"
    return s if float(s) == x else repr(float(x))


@dataclass
class FakeBinance:
    """State of the fake exchange; :meth:`serve` runs it on ``127.0.0.1`` at a free port."""

    markets: dict[str, _Market] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _failures: list[tuple[int, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def add_bars(self, bars: pd.DataFrame, market_id: str, base: str, quote: str, interval: str = "1h") -> None:
        """Serve canonical bars (``timestamp`` UTC bar open, OHLCV floats) as market ``market_id``."""
        step = INTERVAL_MS[interval]
        open_ms = (bars["timestamp"].dt.tz_convert("UTC").astype("datetime64[ms, UTC]").astype("int64")).tolist()
        klines = [
            [t, _fmt(o), _fmt(h), _fmt(lo), _fmt(c), _fmt(v), t + step - 1, _fmt(round(v * c, 8)), 0, "0", "0", "0"]
            for t, o, h, lo, c, v in zip(open_ms, bars["open"], bars["high"], bars["low"], bars["close"],
                                         bars["volume"], strict=True)
        ]
        self.markets[market_id] = _Market(market_id, base, quote, interval, open_ms, klines)

    def fail_next(self, n: int, status: int = 429, path: str = "/api/v3/klines") -> None:
        """Answer the next ``n`` requests to ``path`` with HTTP ``status`` (429, 503, 418, 500, ...)."""
        with self._lock:
            self._failures.extend([(status, path)] * n)

    def reset(self) -> None:
        """Forget recorded requests and pending failures."""
        with self._lock:
            self.requests.clear()
            self._failures.clear()

    def klines_requests(self) -> list[Recorded]:
        """The recorded ``/api/v3/klines`` requests, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.path == "/api/v3/klines"]

    # ----------------------------------------------------------------------------------- HTTP
    def _exchange_info(self) -> dict[str, Any]:
        lot = {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"}
        price = {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                 "tickSize": "0.01000000"}
        return {
            "timezone": "UTC",
            "serverTime": int(time.time() * 1000),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}],
            "exchangeFilters": [],
            "symbols": [
                {"symbol": m.market_id, "status": "TRADING", "baseAsset": m.base, "baseAssetPrecision": 8,
                 "quoteAsset": m.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                 "orderTypes": ["LIMIT", "MARKET"], "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                 "filters": [price, lot], "permissions": ["SPOT"]}
                for m in self.markets.values()
            ],
        }

    def _klines(self, params: dict[str, str]) -> tuple[int, Any]:
        market = self.markets.get(params.get("symbol", ""))
        if market is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if params.get("interval") not in INTERVAL_MS:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        try:
            limit = int(params.get("limit", DEFAULT_LIMIT))
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}
        if not 1 <= limit <= MAX_LIMIT:
            return 400, {"code": -1130, "msg": "Invalid data sent for a parameter."}
        if params["interval"] != market.interval:
            return 200, []  # this fake only holds bars of one interval per market
        lo = bisect.bisect_left(market.open_ms, start) if start is not None else 0
        hi = bisect.bisect_right(market.open_ms, end) if end is not None else len(market.open_ms)
        if start is None:  # Binance: without startTime, the newest `limit` bars up to endTime
            lo = max(lo, hi - limit)
        return 200, market.klines[lo:min(hi, lo + limit)]

    def handle(self, path: str, params: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        """Route one GET request: (status, JSON body or text, extra headers)."""
        with self._lock:
            failure = next((i for i, (_, p) in enumerate(self._failures) if p == path), None)
            status = self._failures.pop(failure)[0] if failure is not None else 200
            self.requests.append(Recorded(path, params, time.monotonic(), status))
        if status == 429:
            return 429, {"code": -1003, "msg": "Too much request weight used; current limit is 6000 request "
                                               "weight per 1 MINUTE."}, {"Retry-After": "1"}
        if status == 418:
            return 418, {"code": -1003, "msg": "Way too much request weight used; IP banned."}, {"Retry-After": "2"}
        if status != 200:
            return status, "Service Unavailable", {}
        if path == "/api/v3/ping":
            return 200, {}, {}
        if path == "/api/v3/time":
            return 200, {"serverTime": int(time.time() * 1000)}, {}
        if path == "/api/v3/exchangeInfo":
            return 200, self._exchange_info(), {}
        if path == "/api/v3/klines":
            code, body = self._klines(params)
            return code, body, {}
        return 404, "Not Found", {}

    @contextmanager
    def serve(self) -> Iterator[FakeBinance]:
        """Run the server on ``127.0.0.1:<free port>`` in a daemon thread; sets :attr:`url`."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                parts = urlsplit(self.path)
                status, body, headers = fake.handle(parts.path, dict(parse_qsl(parts.query)))
                is_json = not isinstance(body, str)
                payload = (json.dumps(body) if is_json else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8" if is_json else "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="fake-binance", daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def ccxt_exchange(self, **config: Any) -> ccxt.binance:
        """A real ``ccxt.binance`` whose every API base URL points at this server (spot markets only).

        Markets are loaded from this server's ``/api/v3/exchangeInfo``; nothing reaches the internet.
        """
        exchange = ccxt.binance({"enableRateLimit": True, "timeout": 5000,
                                 "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
                                 **config})
        exchange.urls["api"] = {name: self.url + urlsplit(base).path for name, base in exchange.urls["api"].items()}
        exchange.session.trust_env = False  # no HTTP(S)_PROXY detour for 127.0.0.1
        return exchange
