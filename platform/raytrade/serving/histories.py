"""Per-symbol feature state of a serving replica: the forecaster's input rows for a request that sends only the
newest bar(s), computed in O(1) per bar (:class:`raytrade.features.streaming.StreamingFeatures`).

A request with at least ``min_bars`` bars is a full history: it is validated, the symbol's state is (re)opened on
it, and, with an online store, the symbol's bar log there is replaced by it. A request with fewer bars *appends*
them to the history held:

* **With the online store** (serve arg ``redis_url``) the store's bar log is the one history every replica shares:
  each new bar is appended there atomically and only after the last bar
  (:meth:`raytrade.store.OnlineFeatureStore.append_bar`); a replica whose state ends at the bar the log ended at
  updates it in memory (about 0.4 ms); one a few bars behind (other replicas took them) first takes in those bars
  from the log, and one further behind rebuilds its state from the log. So one bar per request is enough, whichever
  replica answers.
* **Without a store** each replica holds its own history, so a request must overlap it: its first bar must be one
  of the last bars this replica holds (send the bars since the last one you sent, starting with it). Otherwise,
  with more than one replica, a replica that missed a bar would compute on a history with a hole; it answers 422
  instead (rule ``history_gap``), and the client sends the full history.

A bar sent again (same timestamp, same values) is skipped, so a retried request gives the same answer; a bar that
is not after the last one and differs from the bar held there is refused with the batch path's error
(``duplicate_timestamp`` or ``unsorted_timestamps``). Nothing is dropped, filled or reordered.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import FeatureConfig
from raytrade.data.schema import OHLCV_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.data.validation import validate_bars, validate_next_bar
from raytrade.errors import DataValidationError, InsufficientDataError
from raytrade.features.streaming import RecentBars, StreamingFeatures
from raytrade.store import OnlineFeatureStore

#: bars of the log a replica rebuilds from (and keeps in the store): the feature warm-up, the lookback and margin
DEFAULT_MAX_BARS = 2048
#: the last bars a state remembers, to recognise a bar sent again
RECENT_BARS = 64
#: bars of the log a replica reads to catch up with bars other replicas appended (further behind: it rebuilds)
CATCH_UP_BARS = 32
#: symbols whose state a replica keeps; beyond it the least recently used is dropped (rebuilt from the log if asked)
MAX_SYMBOLS = 10_000


class _Held(RecentBars):
    """One symbol's streaming state plus its recent bars (to recognise resends and overlaps)."""

    def __init__(self, bars: pd.DataFrame, cfg: FeatureConfig, keep: int) -> None:
        self.features = StreamingFeatures(bars, cfg, keep=keep)
        self.features.history = None  # the batch frame the handles came with is not needed after opening
        tail = bars.iloc[-RECENT_BARS:]
        self.recent: deque = deque(
            ({TIMESTAMP: pd.Timestamp(t), **dict(zip(OHLCV_COLUMNS, map(float, v), strict=True))}
             for t, v in zip(tail[TIMESTAMP], tail[list(OHLCV_COLUMNS)].to_numpy(), strict=True)),
            maxlen=RECENT_BARS)

    def update(self, bar: dict[str, Any]) -> None:
        self.features.update(bar)
        self.recent.append(bar)

    def window(self, scaler: Any) -> np.ndarray:
        """The forecaster's scaled window ``(1, lookback, n_features)`` float32 (``scaler``: its
        :class:`~raytrade.features.scaler.FeatureScaler`), as ``bundle.window_from_features`` gives it."""
        return scaler.transform_values(self.features.matrix(scaler.columns))[None]


class SymbolHistories:
    """The symbols' feature states of one replica for one forecaster (feature config and lookback).

    Args:
        cfg: the forecaster's feature settings.
        lookback: rows of the forecaster's window.
        min_bars: bars a full history needs (feature warm-up + lookback).
        store: the online store holding the bar logs, or None (each replica holds its own history).
        max_bars: bars kept in a symbol's bar log (and rebuilt from).
        max_symbols: symbols whose state is kept (least recently used dropped first).
    """

    def __init__(self, cfg: FeatureConfig, lookback: int, min_bars: int, store: OnlineFeatureStore | None = None,
                 max_bars: int = DEFAULT_MAX_BARS, max_symbols: int = MAX_SYMBOLS) -> None:
        self.cfg, self.lookback, self.min_bars, self.store = cfg, int(lookback), int(min_bars), store
        self.max_bars = max(int(max_bars), self.min_bars)
        self.max_symbols = int(max_symbols)
        self._held: OrderedDict[str, _Held] = OrderedDict()
        #: how states were reached: ``opened`` (a full history sent), ``rebuilt`` (from the bar log), ``appended``
        #: (one bar), ``caught_up`` (bars other replicas appended, taken from the log)
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._held)

    def rows(self, symbol: str, bars: pd.DataFrame) -> tuple[pd.DataFrame, pd.Timestamp]:
        """The forecaster's unscaled input rows ``(lookback, 1 + n_features)`` (with ``timestamp``, oldest first)
        at the last bar of ``symbol`` after taking in ``bars`` (oldest first, OHLCV, UTC ``timestamp``), and that
        bar's time (:meth:`take` as a frame).

        Raises:
            as :meth:`take`.
        """
        held = self.take(symbol, bars)
        return held.features.rows(), held.last

    def take(self, symbol: str, bars: pd.DataFrame | list[dict[str, Any]]) -> _Held:
        """Take in ``bars`` of ``symbol`` (a frame, or records ``{timestamp: UTC pd.Timestamp, OHLCV floats}``,
        oldest first): at least ``min_bars`` of them (re)open its state (and, with a store, replace its bar log);
        fewer are appended to the history held. Returns the symbol's state.

        Raises:
            DataValidationError: a bar breaks a validation rule, or (no store) the bars do not continue the history
                held (rule ``history_gap``).
            InsufficientDataError: fewer than ``min_bars`` bars sent and no history of the symbol to append to.
            StoreUnavailableError: the store is configured and unreachable.
        """
        if len(bars) >= self.min_bars:
            frame = bars if isinstance(bars, pd.DataFrame) else _frame(symbol, bars)
            held = self._open(symbol, validate_bars(frame))
            self.counts["opened"] += 1
            if self.store is not None:
                self.store.write_bars(symbol, frame, self.max_bars)
            return held
        return self._append(symbol, _records(bars) if isinstance(bars, pd.DataFrame) else bars)

    def latest(self, symbol: str) -> tuple[pd.DataFrame, pd.Timestamp]:
        """A symbol-only request: the rows at the last bar of ``symbol``'s bar log in the online store
        (:meth:`latest_state` as a frame)."""
        held = self.latest_state(symbol)
        return held.features.rows(), held.last

    def latest_state(self, symbol: str) -> _Held:
        """The state at the last bar of ``symbol``'s bar log in the online store (this replica's when it ends there,
        else rebuilt from the log).

        Raises:
            FeaturesNotFoundError: no store, or no bar log of the symbol (never sent, or expired).
            InsufficientDataError: the log holds fewer than ``min_bars`` bars.
            StoreUnavailableError: the store is unreachable.
        """
        from raytrade.store import FeaturesNotFoundError

        if self.store is None:
            raise FeaturesNotFoundError("-", symbol, key="-", detail="no online store is configured (serve arg "
                                                                     "redis_url)")
        last = self.store.last_bar_time(symbol)
        if last is None:
            raise FeaturesNotFoundError(self.store.feature_set_version, symbol, key=self.store.bars_key(symbol),
                                        detail="no bar log of this symbol in the online store")
        return self._through(symbol, self._get(symbol), last) or self._from_log(symbol)

    # ---- internals ----------------------------------------------------------------------------
    def _open(self, symbol: str, bars: pd.DataFrame) -> _Held:
        held = _Held(bars.reset_index(drop=True), self.cfg, self.lookback)
        self._held[symbol] = held
        self._held.move_to_end(symbol)
        while len(self._held) > self.max_symbols:
            self._held.popitem(last=False)
        return held

    def _too_few(self, symbol: str, have: int, where: str) -> InsufficientDataError:
        return InsufficientDataError(
            f"{symbol!r}: {where} {have} bars of it; send at least {self.min_bars} bars (feature warm-up + "
            f"lookback {self.lookback}) to start its history, then only the new bars")

    def _from_log(self, symbol: str) -> _Held:
        bars = self.store.read_bars(symbol)
        if len(bars) < self.min_bars:
            raise self._too_few(symbol, len(bars), "the online store holds")
        self.counts["rebuilt"] += 1
        return self._open(symbol, bars)

    def _get(self, symbol: str) -> _Held | None:
        held = self._held.get(symbol)
        if held is not None:
            self._held.move_to_end(symbol)
        return held

    def _append(self, symbol: str, bars: list[dict[str, Any]]) -> _Held:
        held = self._get(symbol)
        if self.store is None:
            if held is None:
                raise self._too_few(symbol, 0, "this replica holds (with no online store each replica keeps its own "
                                               "history; serve arg redis_url shares it)")
            if held.held(bars[0]) is None:
                raise DataValidationError(
                    "history_gap", f"the first bar sent ({bars[0][TIMESTAMP].isoformat()}) is not one of the last "
                    f"bars held for {symbol!r} (last {held.last.isoformat()}); with no online store, start with the "
                    f"last bar you sent, or send at least {self.min_bars} bars", column=TIMESTAMP, symbol=symbol,
                    timestamp=bars[0][TIMESTAMP])
        for bar in bars:
            held = self._append_one(symbol, held, bar)
        return held

    def _append_one(self, symbol: str, held: _Held | None, bar: dict[str, Any]) -> _Held:
        if held is not None:
            seen = held.held(bar)
            if seen:
                return held  # sent again: already taken in
            if seen is False or bar[TIMESTAMP] <= held.last:
                validate_next_bar(symbol, held.recent[-1], bar)  # raises duplicate/unsorted, naming the bar
        validate_next_bar(symbol, None, bar)  # the bar's own values, before the shared log takes it
        self.counts["appended"] += 1
        if self.store is None:
            held.update(bar)
            return held
        appended, last, _ = self.store.append_bar(symbol, bar[TIMESTAMP], bar, self.max_bars)
        current = self._through(symbol, held, last)  # this replica's state advanced to the log's bar before
        if appended:
            if current is None:
                return self._from_log(symbol)  # the log, with this bar, is the history
            current.update(bar)
            return current
        current = current or self._from_log(symbol)
        if current.held(bar):
            return current  # another replica took it in already
        validate_next_bar(symbol, current.recent[-1], bar)  # not after the log's last bar: raises its error
        raise AssertionError(f"bar {bar[TIMESTAMP]} of {symbol!r} neither appended nor refused")

    def _through(self, symbol: str, held: _Held | None, last: pd.Timestamp | None) -> _Held | None:
        """``held`` advanced through the log's bars up to ``last`` (the bars other replicas appended meanwhile, one
        O(1) update each), or None when it cannot be (no state, no log, or the log no longer continues it: then
        the caller rebuilds from the log)."""
        if held is None or last is None or held.last > last:
            return None
        if held.last == last:
            return held
        for n in (4, CATCH_UP_BARS):  # usually another replica took a bar or two: read a short tail first
            tail = self.store.tail_bars(symbol, n)
            stamps = [b[TIMESTAMP] for b in tail]
            if held.last in stamps:
                break
        if held.last not in stamps or held.held(tail[stamps.index(held.last)]) is not True:
            return None  # too far behind, or the log was rewritten by a new full history
        for b in tail[stamps.index(held.last) + 1 :]:
            if b[TIMESTAMP] > last:
                break
            held.update(b)
            self.counts["caught_up"] += 1
        return held if held.last == last else None


def _frame(symbol: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({TIMESTAMP: pd.DatetimeIndex([r[TIMESTAMP] for r in records]), SYMBOL: symbol,
                         **{c: np.array([r[c] for r in records], dtype=np.float64) for c in OHLCV_COLUMNS}})


def _records(bars: pd.DataFrame) -> list[dict[str, Any]]:
    ts = pd.DatetimeIndex(bars[TIMESTAMP])
    values = bars[list(OHLCV_COLUMNS)].to_numpy(dtype=float)
    return [{TIMESTAMP: t, **dict(zip(OHLCV_COLUMNS, map(float, v), strict=True))}
            for t, v in zip(ts, values, strict=True)]


__all__ = ["DEFAULT_MAX_BARS", "RECENT_BARS", "SymbolHistories"]
