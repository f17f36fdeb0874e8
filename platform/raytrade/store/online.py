"""Redis online feature/prediction store: the latest window per symbol, versioned keys, TTL.

Serving needs, per symbol, the last ``lookback`` rows of *unscaled* feature columns plus the raw OHLCV bars
required to extend them by one bar. The offline pipeline (or a streaming updater) writes them here; the Serve
ingress reads them instead of recomputing features from request bars.

Key scheme (all keys are plain Redis keys, one per entry):

* ``{prefix}:features:{feature_set_version}:{symbol}`` — a hash with fields

  - ``features``: the feature window as Arrow IPC stream bytes,
  - ``bars``: the raw OHLCV bars as Arrow IPC stream bytes,
  - ``meta``: UTF-8 JSON (``written_at`` UTC ISO-8601, ``feature_set_version``, ``n_rows``, ``n_bars``,
    ``first_timestamp``, ``last_timestamp``, ``feature_columns``, ``user``).

* ``{prefix}:prediction:{feature_set_version}:{symbol}:{bars_fingerprint}`` — a string holding a JSON
  prediction, keyed by :func:`bars_fingerprint` of the bars it was computed from.

* ``{prefix}:bars:{symbol}`` — the symbol's bar log for streaming servers: a list of its latest closed bars,
  oldest first, each ``"<open time in ns since the epoch (UTC) + 2**63, 20 digits>|<JSON of the OHLCV values>"``.
  It does not depend on the feature set (bars are bars). :meth:`OnlineFeatureStore.append_bar` appends one bar
  atomically and only after the last one (a Lua script), so every replica of a server sees one history.

The feature-set version is part of every key, so two feature-set versions (e.g. a model trained on a new feature
list and the current champion) never read each other's windows or predictions. Every key carries a TTL (seconds),
set atomically with the write (MULTI/EXEC), so a symbol whose updater stopped ages out instead of being served stale.

Arrow IPC is lossless for what matters here: float64 values are stored bit-for-bit, tz-aware timestamps keep their
unit and time zone, and pandas metadata (index, dtypes) is restored on read.

No connection is opened at import or construction; the first command connects. Every Redis failure
(connection refused, timeout, protocol or server error) is raised as :class:`StoreUnavailableError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError, RaytradeError

__all__ = [
    "DEFAULT_REDIS_URL",
    "FeaturesNotFoundError",
    "LatestWindow",
    "OnlineFeatureStore",
    "StoreUnavailableError",
    "bars_fingerprint",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
OHLCV_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
"""The bar value columns the fingerprint hashes (plus ``timestamp``) and ``write_latest`` requires in ``bars``."""

_FIELD_FEATURES = "features"
_FIELD_BARS = "bars"
_FIELD_META = "meta"
_NON_FEATURE_COLUMNS = frozenset({"timestamp", "symbol"})
_URL_SCHEMES = frozenset({"redis", "rediss", "unix"})

T = TypeVar("T")


class StoreUnavailableError(RaytradeError):
    """Redis is unreachable, timed out or answered with an error.

    The message names the (password-redacted) URL and what was being attempted, e.g.
    ``"Redis at redis://127.0.0.1:6399/0 is unreachable (write latest window for BTC/USD): Connection refused"``.
    Picklable, so it crosses Ray task/actor boundaries intact.

    Attributes:
        url: the Redis URL, password redacted.
        action: what the store was doing.
        problem: ``"is unreachable"``, ``"timed out"`` or ``"failed with <ErrorType>"``.
        reason: the underlying error's message.
    """

    def __init__(self, url: str, action: str, reason: str, problem: str = "is unreachable") -> None:
        self.url = url
        self.action = action
        self.reason = reason
        self.problem = problem
        super().__init__(f"Redis at {url} {problem} ({action}): {reason}")

    @classmethod
    def from_exception(cls, url: str, action: str, exc: BaseException) -> StoreUnavailableError:
        """Build the error for ``exc`` raised by redis-py (or the socket layer) while doing ``action``."""
        if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
            problem = "timed out"
        elif isinstance(exc, redis.exceptions.ConnectionError | OSError):
            problem = "is unreachable"
        else:
            problem = f"failed with {type(exc).__name__}"
        return cls(url, action, str(exc) or type(exc).__name__, problem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.action, self.reason, self.problem))


class FeaturesNotFoundError(RaytradeError):
    """No entry (never written, deleted or expired) for a (feature-set version, symbol) pair.

    Attributes:
        feature_set_version: the version looked up.
        symbol: the symbol looked up.
        key: the Redis key that was missing.
    """

    def __init__(self, feature_set_version: str, symbol: str, key: str, detail: str = "") -> None:
        self.feature_set_version = feature_set_version
        self.symbol = symbol
        self.key = key
        reason = detail or "never written, deleted or expired"
        super().__init__(
            f"no online features for symbol {symbol!r} under feature-set version {feature_set_version!r} "
            f"(key {key}: {reason})"
        )
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.feature_set_version, self.symbol, self.key, self.detail))


@dataclass(frozen=True)
class LatestWindow:
    """One symbol's latest window as read back from the store.

    Attributes:
        features: the last ``lookback`` rows of unscaled feature columns (with ``timestamp``), exactly as written.
        bars: the raw OHLCV bars written with them, exactly as written.
        meta: the decoded ``meta`` JSON (``written_at``, ``n_rows``, ``last_timestamp``, ``feature_columns``,
            ``user``, ...).
        key: the Redis key the window was read from.
    """

    features: pd.DataFrame
    bars: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


def bars_fingerprint(bars: pd.DataFrame) -> str:
    """A short content hash of OHLCV bars, used to key cached predictions.

    SHA-256 over the timestamps (as UTC nanoseconds since the epoch, int64) followed by the
    ``open, high, low, close, volume`` values (float64, row-major); the first 16 hex characters are returned.
    Any change of one value or one timestamp, or adding/removing a bar, changes the fingerprint; the index,
    the time-zone spelling and the timestamp unit do not.

    Args:
        bars: DataFrame with ``timestamp`` and the OHLCV columns (other columns are ignored).

    Returns:
        16 lowercase hex characters.

    Raises:
        DataValidationError: (rule ``missing_columns``) when ``timestamp`` or an OHLCV column is missing.
    """
    _require_columns(bars, ("timestamp", *OHLCV_COLUMNS), what="bars", symbol=None)
    ts = pd.to_datetime(bars["timestamp"], utc=True).dt.as_unit("ns")
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ts.to_numpy(dtype="int64", na_value=np.iinfo(np.int64).min)).tobytes())
    digest.update(np.ascontiguousarray(bars[list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()[:16]


class OnlineFeatureStore:
    """Latest feature windows and cached predictions per symbol in Redis, versioned by feature set.

    See the module docstring for the key scheme. Instances are cheap, thread-safe (redis-py's connection pool)
    and picklable (the connection is dropped and recreated lazily), so a Ray Serve replica can hold one.
    Every method that talks to Redis raises :class:`StoreUnavailableError` on any Redis failure; methods taking a
    ``symbol`` raise ``ValueError`` for an empty one.

    Args:
        url: Redis URL (``redis://[:password@]host:port/db``, ``rediss://`` or ``unix://``).
        feature_set_version: version of the feature set the windows were computed with; part of every key.
            Must be non-empty and contain no ``:``.
        ttl_s: time to live of every written entry, in seconds (> 0).
        prefix: namespace of every key (non-empty, no ``:``); use a distinct prefix per environment.
        socket_timeout_s: connect and per-command socket timeout, in seconds (> 0). Commands are not retried,
            so an unreachable or hung server fails within about ``2 * socket_timeout_s``.

    Raises:
        ConfigError: an argument is invalid (names it).
    """

    def __init__(
        self,
        url: str = DEFAULT_REDIS_URL,
        *,
        feature_set_version: str,
        ttl_s: int = 86_400,
        prefix: str = "raytrade",
        socket_timeout_s: float = 2.0,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _URL_SCHEMES:
            raise ConfigError(
                f"store.url: {_redact(str(url))!r} is not a Redis URL (expected redis://, rediss:// or unix://)"
            )
        try:
            parse_url(url)
        except ValueError as exc:
            raise ConfigError(f"store.url: {_redact(url)!r} is not a valid Redis URL: {exc}") from exc
        _check_key_part("store.feature_set_version", feature_set_version)
        _check_key_part("store.prefix", prefix)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
            raise ConfigError(f"store.ttl_s: must be a positive integer number of seconds, got {ttl_s!r}")
        if not (isinstance(socket_timeout_s, int | float) and math.isfinite(socket_timeout_s) and socket_timeout_s > 0):
            raise ConfigError(f"store.socket_timeout_s: must be a positive number of seconds, got {socket_timeout_s!r}")
        self.url = url
        self.feature_set_version = feature_set_version
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.socket_timeout_s = float(socket_timeout_s)
        self._client: redis.Redis | None = None

    def __repr__(self) -> str:
        return (
            f"OnlineFeatureStore(url={_redact(self.url)!r}, feature_set_version={self.feature_set_version!r}, "
            f"ttl_s={self.ttl_s}, prefix={self.prefix!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __enter__(self) -> OnlineFeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ keys

    def key(self, symbol: str) -> str:
        """The hash key of ``symbol``'s latest window: ``{prefix}:features:{feature_set_version}:{symbol}``."""
        _check_symbol(symbol)
        return f"{self._features_prefix}{symbol}"

    def prediction_key(self, symbol: str, fingerprint: str) -> str:
        """The key of a cached prediction: ``{prefix}:prediction:{feature_set_version}:{symbol}:{fingerprint}``."""
        _check_symbol(symbol)
        if not fingerprint:
            raise ValueError("bars_fingerprint must be a non-empty string")
        return f"{self.prefix}:prediction:{self.feature_set_version}:{symbol}:{fingerprint}"

    @property
    def _features_prefix(self) -> str:
        return f"{self.prefix}:features:{self.feature_set_version}:"

    # ------------------------------------------------------------ connection

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client, created on first use (no network I/O until a command runs)."""
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=self.socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    def close(self) -> None:
        """Close the connection pool (a later call reconnects)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _call(self, action: str, fn: Callable[[redis.Redis], T]) -> T:
        try:
            return fn(self.client)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreUnavailableError.from_exception(_redact(self.url), action, exc) from exc

    def ping(self) -> bool:
        """Check that Redis answers.

        Returns:
            True when the server answered PING.

        Raises:
            StoreUnavailableError: the server is unreachable, timed out or answered with an error.
        """
        return bool(self._call("ping", lambda r: r.ping()))

    # --------------------------------------------------------------- windows

    def write_latest(
        self,
        symbol: str,
        features: pd.DataFrame,
        bars: pd.DataFrame,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``symbol``'s latest window, replacing the previous one, with a TTL of ``ttl_s`` seconds.

        The three hash fields and the TTL are written in one MULTI/EXEC transaction, so readers never see a
        window without its TTL or a half-written window.

        Args:
            symbol: the symbol, e.g. ``"BTC/USD"``.
            features: the last ``lookback`` rows of unscaled feature columns, with a ``timestamp`` column.
            bars: the raw bars needed to update the features: ``timestamp``, ``open``, ``high``, ``low``,
                ``close``, ``volume`` (and usually ``symbol``, which must then equal ``symbol``).
            meta: extra JSON-serialisable metadata, stored under ``meta["user"]``.

        Returns:
            The Redis key written.

        Raises:
            DataValidationError: a required column is missing (rule ``missing_columns``) or ``bars["symbol"]``
                names another symbol (rule ``symbol_mismatch``).
            InsufficientDataError: ``features`` or ``bars`` has no rows.
            TypeError: ``meta`` is not JSON-serialisable.
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key, mapping = self._encode(symbol, features, bars, meta)

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

        self._call(f"write latest window for {symbol}", write)
        return key

    def write_many(
        self,
        windows: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]],
        meta: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Store the latest windows of many symbols in one MULTI/EXEC round trip (all or none), each with a TTL
        of ``ttl_s`` seconds.

        Args:
            windows: ``{symbol: (features, bars)}``; each pair as in :meth:`write_latest`.
            meta: extra JSON-serialisable metadata stored with every window (``meta["user"]``).

        Returns:
            The keys written, in the mapping's order.

        Raises:
            DataValidationError, InsufficientDataError: as :meth:`write_latest`, before anything is written.
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        encoded = [self._encode(symbol, features, bars, meta) for symbol, (features, bars) in windows.items()]
        if not encoded:
            return []

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=True)
            for key, mapping in encoded:
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.ttl_s)
            pipe.execute()

        self._call(f"write latest windows for {len(encoded)} symbols", write)
        return [key for key, _ in encoded]

    def read_latest(self, symbol: str) -> LatestWindow:
        """Read ``symbol``'s latest window for this feature-set version.

        Returns:
            The window, with DataFrames equal (values, dtypes, tz-aware timestamps, index) to what was written.

        Raises:
            FeaturesNotFoundError: no entry for (feature-set version, symbol): never written, deleted or expired.
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.key(symbol)
        raw: dict[bytes, bytes] = self._call(f"read latest window for {symbol}", lambda r: r.hgetall(key))
        if not raw:
            raise FeaturesNotFoundError(self.feature_set_version, symbol, key)
        missing = [f for f in (_FIELD_FEATURES, _FIELD_BARS, _FIELD_META) if f.encode() not in raw]
        if missing:
            raise FeaturesNotFoundError(
                self.feature_set_version, symbol, key, detail=f"entry lacks field(s) {', '.join(missing)}"
            )
        return LatestWindow(
            features=_from_arrow(raw[_FIELD_FEATURES.encode()]),
            bars=_from_arrow(raw[_FIELD_BARS.encode()]),
            meta=json.loads(raw[_FIELD_META.encode()]),
            key=key,
        )

    def ttl(self, symbol: str) -> int:
        """Seconds until ``symbol``'s window expires.

        Raises:
            FeaturesNotFoundError: no entry for (feature-set version, symbol).
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.key(symbol)
        remaining = int(self._call(f"read TTL of {symbol}", lambda r: r.ttl(key)))
        if remaining == -2:
            raise FeaturesNotFoundError(self.feature_set_version, symbol, key)
        return remaining

    def symbols(self) -> list[str]:
        """The symbols that currently have a window under this prefix and feature-set version, sorted.

        Uses SCAN (non-blocking for the server), never KEYS.

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        prefix = self._features_prefix
        pattern = _glob_escape(prefix) + "*"

        def scan(r: redis.Redis) -> list[str]:
            return sorted({k.decode()[len(prefix) :] for k in r.scan_iter(match=pattern, count=500)})

        return self._call("list symbols", scan)

    def delete(self, symbol: str) -> bool:
        """Delete ``symbol``'s window (cached predictions expire on their own).

        Returns:
            True if an entry was deleted, False if there was none.

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.key(symbol)
        return bool(self._call(f"delete latest window for {symbol}", lambda r: r.delete(key)))

    # -------------------------------------------------------------- bar log

    # each item is "<ordinal>|<json>": the ordinal is the open time in ns + 2**63 as 20 digits, so string order is
    # time order (Lua's numbers are doubles, which cannot hold nanoseconds exactly)
    _APPEND_BAR = """
local last = redis.call('LINDEX', KEYS[1], -1)
local last_t = ''
if last then last_t = string.sub(last, 1, 20) end
if last and ARGV[1] <= last_t then return {0, last_t, redis.call('LLEN', KEYS[1])} end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {1, last_t, redis.call('LLEN', KEYS[1])}
"""

    def bars_key(self, symbol: str) -> str:
        """The list key of ``symbol``'s bar log: ``{prefix}:bars:{symbol}`` (independent of the feature set)."""
        _check_symbol(symbol)
        return f"{self.prefix}:bars:{symbol}"

    def write_bars(self, symbol: str, bars: pd.DataFrame, max_bars: int) -> int:
        """Replace ``symbol``'s bar log by the last ``max_bars`` rows of ``bars`` (``timestamp`` tz-aware, OHLCV,
        oldest first), with a TTL of ``ttl_s``, in one MULTI/EXEC. Returns the number of bars stored.

        Raises:
            DataValidationError: a required column is missing (rule ``missing_columns``).
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        _require_columns(bars, ("timestamp", *OHLCV_COLUMNS), what="bars", symbol=symbol)
        key, tail = self.bars_key(symbol), bars.iloc[-int(max_bars):]
        ns = pd.DatetimeIndex(tail["timestamp"]).as_unit("ns").asi8
        values = tail[list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64)
        items = [_bar_json(int(t), row) for t, row in zip(ns, values, strict=True)]

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.delete(key)
            if items:
                pipe.rpush(key, *items)
                pipe.expire(key, self.ttl_s)
            pipe.execute()

        self._call(f"write the bar log of {symbol}", write)
        return len(items)

    def append_bar(self, symbol: str, timestamp: pd.Timestamp, values: Mapping[str, float],
                   max_bars: int) -> tuple[bool, pd.Timestamp | None, int]:
        """Append one closed bar to ``symbol``'s bar log if it is later than the last bar there (atomic: a Lua
        script), keeping the last ``max_bars`` and renewing the TTL.

        Returns ``(appended, the last bar's timestamp before this call (None: empty log), bars in the log)``; a bar
        not later than the last is not appended (``appended`` False).

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key, t = self.bars_key(symbol), int(pd.Timestamp(timestamp).as_unit("ns").value)
        item = _bar_json(t, [values[c] for c in OHLCV_COLUMNS])
        ok, last, n = self._call(f"append a bar to the log of {symbol}", lambda r: r.eval(
            self._APPEND_BAR, 1, key, item[:20], item, int(max_bars), self.ttl_s))
        last = last.decode() if isinstance(last, bytes) else str(last)
        return bool(ok), (_ordinal_time(last) if last else None), int(n)

    def last_bar_time(self, symbol: str) -> pd.Timestamp | None:
        """The open time of the last bar in ``symbol``'s bar log (UTC), or None when it has none.

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.bars_key(symbol)
        last = self._call(f"read the last bar of {symbol}", lambda r: r.lindex(key, -1))
        return None if last is None else _ordinal_time(last)

    def tail_bars(self, symbol: str, n: int) -> list[dict[str, Any]]:
        """The last ``n`` bars of ``symbol``'s bar log as records ``{timestamp: UTC pd.Timestamp, open, high, low,
        close, volume}``, oldest first (fewer when the log is shorter; none when there is none).

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.bars_key(symbol)
        raw = self._call(f"read the bar log of {symbol}", lambda r: r.lrange(key, -int(n), -1))
        return [_bar_record(x) for x in raw]

    def read_bars(self, symbol: str) -> pd.DataFrame:
        """``symbol``'s bar log as bars (``timestamp`` UTC, ``symbol``, OHLCV float64), oldest first; empty when
        there is none.

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.bars_key(symbol)
        raw = self._call(f"read the bar log of {symbol}", lambda r: r.lrange(key, 0, -1))
        records = [_bar_record(x) for x in raw]
        return pd.DataFrame({
            "timestamp": pd.DatetimeIndex([r["timestamp"] for r in records], dtype="datetime64[ns, UTC]"),
            "symbol": symbol, **{c: np.array([r[c] for r in records], dtype=np.float64) for c in OHLCV_COLUMNS}})

    # ----------------------------------------------------------- predictions

    def cache_prediction(
        self, symbol: str, bars_fingerprint: str, prediction: Mapping[str, Any], ttl_s: int | None = None
    ) -> str:
        """Cache a prediction computed from bars with fingerprint ``bars_fingerprint``.

        Args:
            symbol: the symbol.
            bars_fingerprint: :func:`bars_fingerprint` of the bars the prediction was computed from.
            prediction: JSON-serialisable mapping (numpy scalars/arrays and timestamps are converted).
            ttl_s: time to live in seconds (> 0); defaults to the store's ``ttl_s``.

        Returns:
            The Redis key written.

        Raises:
            ValueError: ``ttl_s`` is not a positive integer.
            TypeError: ``prediction`` is not JSON-serialisable.
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError(f"ttl_s must be a positive integer number of seconds, got {ttl_s!r}")
        key = self.prediction_key(symbol, bars_fingerprint)
        payload = _dumps(dict(prediction))
        self._call(f"cache prediction for {symbol}", lambda r: r.set(key, payload, ex=ttl))
        return key

    def cached_prediction(self, symbol: str, bars_fingerprint: str) -> dict[str, Any] | None:
        """The cached prediction for (symbol, bars fingerprint), or None when absent or expired.

        Raises:
            StoreUnavailableError: Redis is unreachable or timed out.
        """
        key = self.prediction_key(symbol, bars_fingerprint)
        raw = self._call(f"read cached prediction for {symbol}", lambda r: r.get(key))
        return None if raw is None else json.loads(raw)

    # -------------------------------------------------------------- encoding

    def _encode(
        self, symbol: str, features: pd.DataFrame, bars: pd.DataFrame, meta: Mapping[str, Any] | None
    ) -> tuple[str, dict[str, bytes]]:
        key = self.key(symbol)
        _require_columns(features, ("timestamp",), what="features", symbol=symbol)
        _require_columns(bars, ("timestamp", *OHLCV_COLUMNS), what="bars", symbol=symbol)
        for name, frame in (("features", features), ("bars", bars)):
            if len(frame) == 0:
                raise InsufficientDataError(f"{name} for symbol {symbol!r} has no rows; nothing to store")
        if "symbol" in bars.columns:
            other = bars.loc[bars["symbol"] != symbol, "symbol"]
            if len(other):
                raise DataValidationError(
                    "symbol_mismatch",
                    f"bars stored for {symbol!r} contain rows of {other.iloc[0]!r}",
                    column="symbol",
                    symbol=symbol,
                    timestamp=bars.loc[other.index[0], "timestamp"],
                    count=len(other),
                )
        ts = features["timestamp"]
        meta_doc = {
            "written_at": datetime.now(UTC).isoformat(),
            "feature_set_version": self.feature_set_version,
            "symbol": symbol,
            "n_rows": len(features),
            "n_bars": len(bars),
            "first_timestamp": _iso(ts.iloc[0]),
            "last_timestamp": _iso(ts.iloc[-1]),
            "last_bar_timestamp": _iso(bars["timestamp"].iloc[-1]),
            "feature_columns": [str(c) for c in features.columns if c not in _NON_FEATURE_COLUMNS],
            "user": dict(meta) if meta is not None else {},
        }
        mapping = {
            _FIELD_FEATURES: _to_arrow(features),
            _FIELD_BARS: _to_arrow(bars),
            _FIELD_META: _dumps(meta_doc).encode(),
        }
        return key, mapping


# ------------------------------------------------------------------ helpers


def _bar_json(t_ns: int, values: Any) -> str:
    """One bar of a bar log: ``"<ns + 2**63, 20 digits>|{"open", "high", "low", "close", "volume"}"`` (JSON floats
    are written as ``repr``, so they read back exactly)."""
    body = json.dumps({c: float(v) for c, v in zip(OHLCV_COLUMNS, values, strict=True)})
    return f"{t_ns + 2**63:020d}|{body}"


def _ordinal_time(item: bytes | str) -> pd.Timestamp:
    """The open time (UTC) of a bar-log item, or of its 20-digit ordinal alone."""
    return pd.Timestamp(int(item[:20]) - 2**63, unit="ns", tz="UTC")


def _bar_record(item: bytes) -> dict[str, Any]:
    """A bar-log item as ``{timestamp: UTC pd.Timestamp, open, high, low, close, volume}``."""
    return {"timestamp": _ordinal_time(item), **json.loads(item[21:])}


def _to_arrow(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_arrow(payload: bytes) -> pd.DataFrame:
    return pa.ipc.open_stream(payload).read_all().to_pandas()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=True)


def _iso(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).isoformat()


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], *, what: str, symbol: str | None) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            "missing_columns",
            f"{what} lack required column(s) {', '.join(missing)}",
            column=missing[0],
            symbol=symbol,
        )


def _check_key_part(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or ":" in value:
        raise ConfigError(f"{name}: must be a non-empty string without ':', got {value!r}")


def _check_symbol(symbol: object) -> None:
    if not isinstance(symbol, str) or not symbol:
        raise ValueError(f"symbol must be a non-empty string, got {symbol!r}")


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
