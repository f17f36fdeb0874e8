"""Incremental features: one symbol's feature row for each new bar in O(1), equal to the batch computation.

:func:`raytrade.features.technical.compute_features` recomputes every feature over all the bars it is given
(about 3 ms for 330 bars, almost all of it per-call overhead of ~50 TA-Lib calls). A server that receives one
new bar at a time keeps a :class:`StreamingFeatures` per symbol instead: it is opened on the symbol's history
and then :meth:`StreamingFeatures.update` computes only the new bar's row.

It runs the SAME formulas (the registry of :mod:`raytrade.features.technical`) with two substitutions in
``_Inputs``: every TA-Lib call goes to a TA-Lib stream handle (``talib.stream``, TA-Lib >= 0.8, whose values are
bit-identical to the Function API's for the same bar) and every look-back (``lag``) reads a small ring of the
values it saw. When opening, each handle is built with ``open_and_fill``, which also returns the batch series,
so opening costs one batch computation and yields the history's features too. The other operations are
element-wise numpy on the new bar's values. ``tests/test_streaming_features.py`` checks that every row
:meth:`~StreamingFeatures.update` returns equals ``compute_features`` over the whole history, bit for bit.

Cross-asset features (against a reference symbol's close) stream too: the state is opened with the reference's
close series, as :func:`~raytrade.features.technical.compute_features` takes it, and each new bar comes with the
reference's close as of that bar (its latest close at or before the bar's time). Handles cannot be pickled, so a
state lives in one process (a Serve replica) and is rebuilt from stored bars elsewhere.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import talib
import talib.stream as ta_stream

from raytrade.config import FeatureConfig
from raytrade.data.schema import OHLCV_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.data.validation import validate_next_bar
from raytrade.errors import InsufficientDataError
from raytrade.features.technical import _Inputs, _lag, feature_specs, warmup_bars


class _OpeningTA:
    """Stands in for ``talib`` while opening: each call opens a stream handle on the whole input series
    (``open_and_fill``) and returns the batch output, like the Function API."""

    def __init__(self) -> None:
        self.handles: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        stream_cls = getattr(ta_stream, name)

        def call(*arrays: np.ndarray, **params: Any) -> Any:
            try:
                handle, out = stream_cls.open_and_fill(*(np.ascontiguousarray(a, dtype=np.float64) for a in arrays),
                                                       **params)
            except talib.InsufficientHistory as exc:
                raise InsufficientDataError(f"too few bars to open the {name} stream: {exc}") from None
            self.handles.append((name, handle))
            return out

        return call


class _UpdatingTA:
    """Stands in for ``talib`` on a new bar: call ``k`` feeds the bar's inputs to handle ``k`` (the calls come in
    the same order as when opening, because the same formulas run)."""

    def __init__(self, handles: list[tuple[str, Any]]) -> None:
        self.handles, self.k = handles, 0

    def __getattr__(self, name: str) -> Any:
        def call(*arrays: np.ndarray, **params: Any) -> Any:
            opened, handle = self.handles[self.k]
            if opened != name:  # the formulas run in a fixed order; anything else is a bug here
                raise RuntimeError(f"stream call {self.k} is {name}, but {opened} was opened there")
            self.k += 1
            out = handle.update(*(float(a[0]) for a in arrays))
            return tuple(np.array([v], dtype=np.float64) for v in out) if isinstance(out, tuple) \
                else np.array([out], dtype=np.float64)

        return call


class _ManyTA:
    """Stands in for ``talib`` on one new bar of each of several symbols: call ``k`` feeds bar ``i``'s inputs to
    handle ``k`` of symbol ``i``, so the formulas run once over arrays of one value per symbol. ``calls[k]`` is
    ``(name, [handle k of each symbol])`` (:func:`many_calls`)."""

    def __init__(self, calls: list[tuple[str, list[Any]]]) -> None:
        self.calls, self.k = calls, 0

    def __getattr__(self, name: str) -> Any:
        def call(*arrays: np.ndarray, **params: Any) -> Any:
            opened, handles = self.calls[self.k]
            if opened != name:  # the formulas run in a fixed order; anything else is a bug here
                raise RuntimeError(f"stream call {self.k} is {name}, but {opened} was opened there")
            self.k += 1
            n = len(handles)
            cols = [a.tolist() if len(a) > 1 else [float(a[0])] * n for a in arrays]
            if len(cols) == 1:
                outs = [h.update(x) for h, x in zip(handles, cols[0], strict=True)]
            elif len(cols) == 2:
                outs = [h.update(x, y) for h, x, y in zip(handles, cols[0], cols[1], strict=True)]
            else:
                outs = [h.update(*xs) for h, *xs in zip(handles, *cols, strict=True)]
            if isinstance(outs[0], tuple):
                return tuple(np.array(v, dtype=np.float64) for v in zip(*outs, strict=True))
            return np.array(outs, dtype=np.float64)

        return call


def many_calls(handles: list[list[tuple[str, Any]]]) -> list[tuple[str, list[Any]]]:
    """Several symbols' handle lists (each ``[(name, handle), ...]`` in call order) as :class:`_ManyTA`'s ``calls``:
    per call, its name and every symbol's handle. The handles advance in place, so the result can be kept."""
    return [(name, [hs[k][1] for hs in handles]) for k, (name, _) in enumerate(handles[0])]


class RecentBars:
    """What a streaming state knows of its last bars, to recognise one sent again: a mixin for a class whose
    ``recent`` is a deque of ``{timestamp, open, high, low, close, volume}`` dicts, oldest first (UTC timestamps)."""

    recent: deque

    @property
    def last(self) -> pd.Timestamp:
        """The newest held bar's timestamp."""
        return self.recent[-1][TIMESTAMP]

    def held(self, bar: Mapping[str, Any]) -> bool | None:
        """True: ``bar`` (``timestamp`` + OHLCV) is a held bar with the same values, sent again; False: a held
        timestamp with other values (a revision, which the callers refuse); None: no held bar has its timestamp."""
        for b in reversed(self.recent):
            if b[TIMESTAMP] == bar[TIMESTAMP]:
                return all(b[c] == bar[c] for c in OHLCV_COLUMNS)
            if b[TIMESTAMP] < bar[TIMESTAMP]:
                return None
        return None


class _Calendar:
    """The fields of one bar's timestamp the calendar features read (``DatetimeIndex``'s, as arrays)."""

    def __init__(self, ts: pd.Timestamp) -> None:
        self.hour = np.array([ts.hour], dtype=np.int32)
        self.dayofweek = np.array([ts.dayofweek], dtype=np.int32)
        self.month = np.array([ts.month], dtype=np.int32)


class _StreamInputs(_Inputs):
    """``_Inputs`` whose ``ta`` and ``lag`` are the streaming ones; ``lags`` holds one ring per look-back site.
    Opening reads a bars frame; a new bar comes as arrays of length one (no pandas on that path)."""

    def __init__(self, bars: pd.DataFrame | None, ta: Any, lags: list[deque], opening: bool,
                 bar: dict[str, Any] | None = None, reference: pd.Series | None = None,
                 reference_close: float | None = None) -> None:
        if bars is not None:
            super().__init__(bars, reference)
        else:
            self.o, self.h, self.low, self.c, self.v = (np.atleast_1d(np.asarray(bar[k], dtype=np.float64))
                                                        for k in OHLCV_COLUMNS)
            self.ts = _Calendar(bar[TIMESTAMP])
            self._reference, self._cache = None, {}
            if reference_close is not None:  # the as-of aligned reference close of this bar (or these bars)
                self._reference = True
                self._cache["ref_c"] = np.broadcast_to(np.asarray(reference_close, dtype=np.float64),
                                                       self.c.shape).copy()
        self.ta, self._lags, self._opening, self._site = ta, lags, opening, 0
        self._many: list[list[deque]] | None = None

    def lag(self, a: np.ndarray, n: int) -> np.ndarray:
        site = self._site
        self._site += 1
        if self._opening:  # keep the last n values of the series: at the next bar, the oldest is its lag-n value
            ring: deque = deque(a[-n:], maxlen=n)
            self._lags.append(ring)
            return _lag(a, n)
        if self._many is not None:  # one bar of each of several symbols: their rings at this site
            out = np.empty(len(a), dtype=np.float64)
            for i, lags in enumerate(self._many):
                ring = lags[site]
                out[i] = ring[0] if len(ring) == n else np.nan
                ring.append(float(a[i]))
            return out
        ring = self._lags[site]
        out = np.array([ring[0] if len(ring) == n else np.nan], dtype=np.float64)
        ring.append(float(a[0]))
        return out


class StreamingFeatures:
    """One symbol's features, updated one bar at a time; each row equals :func:`compute_features` over the whole
    history at that bar.

    Args:
        bars: the symbol's validated bars, oldest first (schema of :mod:`raytrade.data.schema`); at least
            :func:`~raytrade.features.technical.warmup_bars` + 1 of them.
        cfg: feature settings.
        keep: how many of the latest feature rows to keep (:attr:`rows`, e.g. the forecaster's lookback).
        reference: close of the reference symbol indexed by timestamp (UTC), as
            :func:`~raytrade.features.technical.compute_features` takes it: adds the cross-asset features (then
            every :meth:`update` needs the reference's close as of the bar). None leaves them out.

    Attributes:
        columns: the feature column names, in :func:`~raytrade.features.technical.feature_columns` order.
        history: ``compute_features(bars, cfg)`` of the opening bars (the batch output the handles came with).
        last_bar: the latest bar (``timestamp`` and OHLCV) the state has seen.

    Raises:
        InsufficientDataError: fewer bars than a stream needs to open.
    """

    def __init__(self, bars: pd.DataFrame, cfg: FeatureConfig, keep: int = 1,
                 reference: pd.Series | None = None) -> None:
        self.cfg = cfg
        self.cross_asset = reference is not None
        self.specs = feature_specs(cfg, cross_asset=self.cross_asset)
        self.columns = [s.name for s in self.specs]
        need = warmup_bars(cfg, cross_asset=self.cross_asset) + 1
        if len(bars) < need:
            raise InsufficientDataError(f"need at least {need} bars to open the feature streams, got {len(bars)}")
        ta, self._lags = _OpeningTA(), []
        x = _StreamInputs(bars, ta, self._lags, opening=True, reference=reference)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {s.name: np.asarray(s.fn(x), dtype=np.float64) for s in self.specs}
        self._handles = ta.handles
        columns: dict[str, Any] = {c: bars[c].reset_index(drop=True) for c in (TIMESTAMP, SYMBOL)}
        columns.update({c: bars[c].to_numpy(dtype=np.float64) for c in OHLCV_COLUMNS})
        self.history = pd.DataFrame({**columns, **out}, copy=False)
        self.symbol = bars[SYMBOL].iloc[-1]
        self.keep = int(keep)
        self._index: dict[tuple[str, ...], np.ndarray] = {}
        tail = self.history.iloc[-self.keep:]
        self._rows: deque = deque((tail[self.columns].to_numpy(dtype=np.float64)), maxlen=self.keep)
        self._times: deque = deque(pd.DatetimeIndex(tail[TIMESTAMP]), maxlen=self.keep)
        last = bars.iloc[-1]
        self.last_bar = {TIMESTAMP: pd.Timestamp(last[TIMESTAMP]).tz_convert("UTC"),
                         **{c: float(last[c]) for c in OHLCV_COLUMNS}}

    def update(self, bar: dict[str, Any], reference_close: float | None = None) -> np.ndarray:
        """Advance the state by one closed bar (``timestamp`` and OHLCV, later than :attr:`last_bar`) and return
        its feature row ``(n_features,)`` float64, in :attr:`columns` order. ``reference_close``: the reference
        symbol's latest close at or before the bar's time (required, and only used, with cross-asset features).

        Raises:
            ValueError: a state with cross-asset features gets no ``reference_close``.
            DataValidationError: the bar breaks a rule of :func:`~raytrade.data.validation.validate_bars` together
                with the last bar held (not later than it, high below low, a non-positive price, ...); the
                state is then unchanged.
        """
        ts = pd.Timestamp(bar[TIMESTAMP])
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        values = {c: float(bar[c]) for c in OHLCV_COLUMNS}
        new = {TIMESTAMP: ts, **values}
        if self.cross_asset and reference_close is None:
            raise ValueError(f"symbol {self.symbol}: the cross-asset features need the reference close as of {ts}")
        validate_next_bar(self.symbol, self.last_bar, new)  # the batch path's error rules, for one bar
        # the handles and rings move together: work on copies and commit only when every feature was computed
        handles = [(name, h.copy()) for name, h in self._handles]
        lags = [deque(r, maxlen=r.maxlen) for r in self._lags]
        x = _StreamInputs(None, _UpdatingTA(handles), lags, opening=False, bar=new,
                          reference_close=reference_close if self.cross_asset else None)
        with np.errstate(invalid="ignore", divide="ignore"):
            row = np.array([np.asarray(s.fn(x), dtype=np.float64)[0] for s in self.specs], dtype=np.float64)
        self._handles, self._lags = handles, lags
        self._rows.append(row)
        self._times.append(ts)
        self.last_bar = new
        return row

    @staticmethod
    def update_many(states: list[StreamingFeatures], bars: list[dict[str, Any]],
                    reference_close: float | None = None,
                    calls: list[tuple[str, list[Any]]] | None = None) -> np.ndarray:
        """:meth:`update` of several symbols' states at one timestamp, each with its own new bar, running the
        formulas once over arrays of one value per symbol (the TA-Lib stream handles still advance one by one):
        the rows are the ones :meth:`update` gives, in a fraction of the time for many symbols.

        Args:
            states: the symbols' states, all of one feature set (same ``cfg`` and ``cross_asset``).
            bars: ``states[i]``'s new bar (``timestamp`` and OHLCV), all at the same timestamp.
            reference_close: the reference symbol's latest close at or before that timestamp (cross-asset only).
            calls: ``many_calls([st._handles for st in states])``, when the caller keeps it for these states.

        Returns:
            ``(len(states), n_features)`` float64, in :attr:`columns` order.

        Raises:
            DataValidationError: a bar breaks a rule with its state's last bar; no state has changed then.
            ValueError: cross-asset states and no ``reference_close``.
        """
        first = states[0]
        if first.cross_asset and reference_close is None:
            raise ValueError("the cross-asset features need the reference close as of the bars' time")
        news = []
        for st, bar in zip(states, bars, strict=True):
            ts = pd.Timestamp(bar[TIMESTAMP])
            new = {TIMESTAMP: ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC"),
                   **{c: float(bar[c]) for c in OHLCV_COLUMNS}}
            validate_next_bar(st.symbol, st.last_bar, new)  # every bar before any state moves
            news.append(new)
        columns = {c: np.array([b[c] for b in news], dtype=np.float64) for c in OHLCV_COLUMNS}
        calls = calls if calls is not None else many_calls([st._handles for st in states])
        x = _StreamInputs(None, _ManyTA(calls), first._lags, opening=False,
                          bar={TIMESTAMP: news[0][TIMESTAMP], **columns},
                          reference_close=reference_close if first.cross_asset else None)
        x._many = [st._lags for st in states]
        n = len(states)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows = np.stack([np.broadcast_to(np.asarray(s.fn(x), dtype=np.float64), (n,)) for s in first.specs],
                            axis=1)
        for st, new, row in zip(states, news, rows, strict=True):
            st._rows.append(row)
            st._times.append(new[TIMESTAMP])
            st.last_bar = new
        return rows

    def matrix(self, columns: list[str]) -> np.ndarray:
        """The latest ``keep`` rows of ``columns`` (a subset of :attr:`columns`, in the order given) as float64
        ``(rows held, len(columns))``, oldest first."""
        key = tuple(columns)
        if key not in self._index:
            self._index[key] = np.array([self.columns.index(c) for c in columns], dtype=np.intp)
        return np.asarray(self._rows)[:, self._index[key]]

    def rows(self) -> pd.DataFrame:
        """The latest ``keep`` feature rows (oldest first) with ``timestamp``: the same frame
        ``compute_features(...).iloc[-keep:][["timestamp", *columns]]`` gives over the whole history."""
        frame = pd.DataFrame(np.asarray(self._rows), columns=self.columns)
        frame.insert(0, TIMESTAMP, pd.DatetimeIndex(list(self._times)))
        return frame
