"""Incremental features of a universe: every symbol's forecaster row at each new bar (per-symbol, cross-asset and
cross-sectional ``xs_`` columns) and the closes FinRL's turbulence index reads, in O(symbols) per bar instead of
recomputing every symbol's whole history.

The batch path of ``POST /portfolio`` (:func:`raytrade.serving.portfolio_steps.universe_features`) recomputes, for
30 symbols x 338 bars, the per-symbol features, the cross-section of every timestamp and the turbulence index over
the whole calendar to use one row of each (about 180 ms of compute). A :class:`StreamingUniverse` is opened on the
universe's history with that same batch computation, then takes one timestamp's bars at a time:

* per symbol, :class:`~raytrade.features.streaming.StreamingFeatures` (TA-Lib stream handles; the cross-asset
  features get the reference symbol's close as of the bar) and the cross-sectional inputs of
  :func:`~raytrade.features.cross_sectional.input_series` on stream handles of their own: bit-identical to batch;
* across symbols, the members at the bar (module docstring of :mod:`raytrade.features.cross_sectional`): their
  average ranks (``scipy.stats.rankdata``) and z-scores, the equal-weight universe return ``u_t`` added to the
  running cumulative ``U``, and each member's universe return over its own bar-to-bar interval
  ``U(t) - U(as of its previous bar)``; beta and correlation over the last ``beta_window`` member rows of the
  symbol (TA-Lib CORREL / STDDEV on those rows, :func:`~raytrade.features.cross_sectional.beta_corr`);
* the last closes of the union calendar (:meth:`StreamingUniverse.closes`), from which the serving layer computes
  the turbulence index as the batch path does (:func:`raytrade.serving.portfolio_steps.turbulence_at_last`), bit
  for bit.

The ``xs_`` values equal the batch ones up to floating-point summation order (pandas' grouped mean and std use
compensated sums; TA-Lib's CORREL over a whole series keeps running sums): ``tests/test_streaming_universe.py``
checks every row of every symbol over a year of Dow + SPY bars against the batch path, the per-symbol and
cross-asset columns and the turbulence index bit for bit, the ``xs_`` columns to 1e-9.

Causal: a timestamp's bars are taken in only after the previous timestamp's, so a bar older than the universe's
latest one is refused (its cross-section is closed), never slotted in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from raytrade.config import FeatureConfig
from raytrade.data.schema import OHLCV_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.data.universe import Panel
from raytrade.data.validation import validate_next_bar
from raytrade.errors import DataValidationError
from raytrade.features.cross_sectional import (
    _FLAT,
    PREV_TS,
    R1,
    RET,
    VOL,
    VOLU,
    _asof,
    _ns,
    beta_corr,
    cross_sectional_columns,
    cross_sectional_step,
    input_series,
    member_rows,
    universe_pairs,
)
from raytrade.features.streaming import RecentBars, StreamingFeatures, _ManyTA, _OpeningTA, many_calls

__all__ = ["StreamingUniverse"]

#: the last bars of a symbol a state remembers, to recognise a bar sent again
RECENT_BARS = 8


def _utc(ts: Any) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


class _Symbol(RecentBars):
    """One symbol's part of the universe state."""

    def __init__(self, features: StreamingFeatures, input_handles: list, recent: deque, lookback: int,
                 beta_window: int) -> None:
        self.features, self.input_handles, self.recent = features, input_handles, recent
        self.ring_r: deque = deque(maxlen=beta_window)  # the last member rows' 1-bar log returns
        self.ring_u: deque = deque(maxlen=beta_window)  # ... and the universe's over the same intervals
        self.u_prev = 0.0  # cumulative universe return U as of the symbol's last bar
        self.rows: deque = deque(maxlen=lookback)  # the last complete forecaster rows ...
        self.times: deque = deque(maxlen=lookback)  # ... and their times
        self.last_complete: pd.Timestamp | None = None


class StreamingUniverse:
    """A universe's forecaster rows and recent closes, updated one timestamp at a time.

    Args:
        frames: symbol -> its validated bars (OHLCV, UTC ``timestamp``, ``symbol``), oldest first, in the universe's
            order; each at least the per-symbol warm-up + 1 bars.
        cfg: the forecaster's feature settings.
        columns: the forecaster's input columns, in its order (per-symbol, cross-asset and ``xs_`` ones).
        lookback: rows of a forecaster window.
        own_columns: the per-symbol (and cross-asset) columns whose completeness makes a row a cross-sectional
            member (:func:`raytrade.features.cross_sectional.add_cross_sectional`'s ``columns``).
        reference_symbol: the symbol the cross-asset features are measured against (one of ``frames``), or None
            when the forecaster has none.
        cross_sectional: whether the forecaster has ``xs_`` columns.
        keep_closes: rows of the calendar's closes to keep (:meth:`closes`; the turbulence index needs
            ``portfolio.turbulence_window + 2``).

    Attributes:
        timestamp: the latest bar time of any symbol (the decision bar).

    Raises:
        InsufficientDataError: a symbol has too few bars to open its streams.
        DataValidationError: the reference symbol is not in ``frames``.
    """

    def __init__(self, frames: Mapping[str, pd.DataFrame], cfg: FeatureConfig, columns: Sequence[str],
                 lookback: int, own_columns: Sequence[str], reference_symbol: str | None = None,
                 cross_sectional: bool = True, keep_closes: int = 254) -> None:
        self.cfg, self.columns, self.lookback = cfg, list(columns), int(lookback)
        self.own_columns, self.reference_symbol = list(own_columns), reference_symbol
        self.cross_sectional, self.keep_closes = bool(cross_sectional), max(int(keep_closes), 1)
        self.symbols = list(frames)
        reference = None
        if reference_symbol is not None:
            if reference_symbol not in frames:
                raise DataValidationError(
                    "reference_symbol", f"the cross-asset features are measured against {reference_symbol}; send "
                    "its bars too", column=None, symbol=reference_symbol)
            ref = frames[reference_symbol]
            reference = pd.Series(ref["close"].to_numpy(dtype=np.float64), index=pd.DatetimeIndex(ref[TIMESTAMP]))
        w = cfg.cross_sectional_window
        self._state: dict[str, _Symbol] = {}
        self._calls: dict[tuple[str, ...], tuple[list, list]] = {}
        parts, inputs = [], []
        for symbol, bars in frames.items():
            bars = bars.reset_index(drop=True)
            features = StreamingFeatures(bars, cfg, keep=1, reference=reference)
            parts.append(features.history)
            features.history = None
            ta = _OpeningTA()
            r1, ret, vol, volu = input_series(bars["close"].to_numpy(dtype=np.float64),
                                              bars["volume"].to_numpy(dtype=np.float64), w, ta)
            ts = bars[TIMESTAMP].reset_index(drop=True)
            inputs.append(pd.DataFrame({R1: r1, PREV_TS: ts.shift(1), RET: ret, VOL: vol, VOLU: volu}))
            tail = bars.iloc[-RECENT_BARS:]
            recent = deque(({TIMESTAMP: _utc(t), **dict(zip(OHLCV_COLUMNS, map(float, v), strict=True))}
                            for t, v in zip(tail[TIMESTAMP], tail[list(OHLCV_COLUMNS)].to_numpy(), strict=True)),
                           maxlen=RECENT_BARS)
            self._state[symbol] = _Symbol(features, ta.handles, recent, self.lookback, cfg.beta_window)
        feature_names = next(iter(self._state.values())).features.columns
        self._own_index = [feature_names.index(c) for c in self.own_columns]
        self._own_source = [feature_names.index(c) for c in self.columns if c in feature_names]
        self._from_own = [k for k, c in enumerate(self.columns) if c in feature_names]
        xs_names = cross_sectional_columns(cfg)
        self._xs_pick = [k for k, c in enumerate(xs_names) if c in self.columns]
        self._from_xs = [self.columns.index(xs_names[k]) for k in self._xs_pick]
        frame = pd.concat(parts, ignore_index=True)
        if self.cross_sectional:
            frame = self._open_cross_section(frame, pd.concat(inputs, ignore_index=True))
        values = frame[self.columns].to_numpy(dtype=np.float64)
        complete = ~np.isnan(values).any(axis=1)
        for symbol, idx in frame.groupby(SYMBOL, sort=False).indices.items():
            st = self._state[str(symbol)]
            ok = idx[complete[idx]][-self.lookback:]
            st.rows.extend(values[ok])
            times = pd.DatetimeIndex(frame[TIMESTAMP].iloc[ok])
            st.times.extend(times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC"))
            if len(ok):
                st.last_complete = st.times[-1]
        panel = Panel.from_bars(pd.concat(list(frames.values()), ignore_index=True), self.symbols)
        self._closes: deque = deque(np.asarray(panel.close, dtype=np.float64)[-self.keep_closes:],
                                    maxlen=self.keep_closes)
        self._times: deque = deque(pd.DatetimeIndex(panel.timestamps)[-self.keep_closes:], maxlen=self.keep_closes)
        self.timestamp = _utc(self._times[-1])

    # ---- opening --------------------------------------------------------------------------------
    def _open_cross_section(self, frame: pd.DataFrame, inputs: pd.DataFrame) -> pd.DataFrame:
        """The batch ``xs_`` columns of the history, and from the same member rows the running state: ``U``, each
        symbol's ``U`` as of its last bar and its last ``beta_window`` member rows."""
        members = member_rows(frame, inputs, self.own_columns)
        xs = cross_sectional_step(members, self.cfg).reindex(frame.index)
        universe, cumulative, u_pair = universe_pairs(members)
        self._U = float(cumulative[-1]) if len(cumulative) else 0.0
        u_index = _ns(universe.index)
        r1 = members[R1].to_numpy(dtype=np.float64)
        n = self.cfg.beta_window
        for symbol, idx in members.groupby(SYMBOL, sort=False).indices.items():
            st = self._state[str(symbol)]
            st.ring_r.extend(r1[idx][-n:])
            st.ring_u.extend(u_pair[idx][-n:])
        for st in self._state.values():
            st.u_prev = float(_asof(cumulative, u_index, _ns(pd.DatetimeIndex([st.last])))[0])
        return pd.concat([frame, xs], axis=1)

    # ---- one timestamp --------------------------------------------------------------------------
    def update(self, bars: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
        """Take in new bars: symbol -> its bars ``{timestamp, open, high, low, close, volume}`` (oldest first). A
        bar the state holds (same time and values) is skipped; the others are taken in one timestamp at a time,
        every symbol's bar at a timestamp together. Returns the number of new timestamps.

        All or nothing: every bar is checked before any is taken in, so a refused request leaves the state as it
        was.

        Raises:
            DataValidationError: a symbol outside the universe (rule ``unknown_symbol``); a bar that breaks a rule of
                :func:`~raytrade.data.validation.validate_bars` with the symbol's previous bar (not later than it,
                high below low, ...; a held time with other values is ``duplicate_timestamp``); or a new bar older
                than the universe's latest bar (rule ``late_bar``: its cross-section is closed).
        """
        by_time: dict[pd.Timestamp, dict[str, dict[str, Any]]] = {}
        for symbol, records in bars.items():
            st = self._state.get(symbol)
            if st is None:
                raise DataValidationError("unknown_symbol", f"{symbol!r} is not in this universe {self.symbols}",
                                          column=None, symbol=symbol)
            previous = dict(st.recent[-1])
            for rec in records:
                bar = {TIMESTAMP: _utc(rec[TIMESTAMP]), **{c: float(rec[c]) for c in OHLCV_COLUMNS}}
                seen = st.held(bar)
                if seen:
                    continue
                if seen is False:
                    raise DataValidationError(
                        "duplicate_timestamp", f"symbol {symbol}: a bar at {bar[TIMESTAMP].isoformat()} is already "
                        "held with other values (a bar, once taken in, is not revised)", column=TIMESTAMP,
                        symbol=symbol, timestamp=bar[TIMESTAMP])
                validate_next_bar(symbol, previous, bar)
                if bar[TIMESTAMP] <= self.timestamp:
                    raise DataValidationError(
                        "late_bar", f"symbol {symbol}: bar at {bar[TIMESTAMP].isoformat()} is not after the "
                        f"universe's latest bar {self.timestamp.isoformat()}; the cross-section there is closed "
                        "(send every symbol's bars of a timestamp before the next timestamp's)", column=TIMESTAMP,
                        symbol=symbol, timestamp=bar[TIMESTAMP])
                previous = bar
                by_time.setdefault(bar[TIMESTAMP], {})[symbol] = bar
        for t in sorted(by_time):
            self._step(t, by_time[t])
        return len(by_time)

    def _step(self, t: pd.Timestamp, bars: dict[str, dict[str, Any]]) -> None:
        symbols = [s for s in self.symbols if s in bars]  # the universe's order
        states = [self._state[s] for s in symbols]
        ref_close = None
        if self.reference_symbol is not None:
            ref_bar = bars.get(self.reference_symbol)
            ref_close = (ref_bar if ref_bar is not None else self._state[self.reference_symbol].recent[-1])["close"]
        key = tuple(symbols)
        if key not in self._calls:  # the handles advance in place: their per-call lists are kept per symbol set
            self._calls[key] = (many_calls([st.features._handles for st in states]),
                                many_calls([st.input_handles for st in states]))
        feature_calls, input_calls = self._calls[key]
        rows = StreamingFeatures.update_many([st.features for st in states], [bars[s] for s in symbols], ref_close,
                                             feature_calls)
        close = np.array([bars[s]["close"] for s in symbols], dtype=np.float64)
        volume = np.array([bars[s]["volume"] for s in symbols], dtype=np.float64)
        inputs = np.stack(input_series(close, volume, self.cfg.cross_sectional_window, _ManyTA(input_calls)),
                          axis=1)  # (n, 4)
        for s, st in zip(symbols, states, strict=True):
            st.recent.append(bars[s])
        own = rows[:, self._own_index]
        full = np.full((len(symbols), len(self.columns)), np.nan)
        full[:, self._from_own] = rows[:, self._own_source]
        if self.cross_sectional:
            full[:, self._from_xs] = self._cross_section(states, own, inputs)[:, self._xs_pick]
        complete = ~np.isnan(full).any(axis=1)
        for st, row, ok in zip(states, full, complete, strict=True):
            if ok:
                st.rows.append(row)
                st.times.append(t)
                st.last_complete = t
        by_symbol = dict(zip(symbols, close, strict=True))
        self._closes.append(np.array([by_symbol.get(s, np.nan) for s in self.symbols]))
        self._times.append(t)
        self.timestamp = t

    def _cross_section(self, states: list[_Symbol], own: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """The ``xs_`` values ``(n, len(xs columns))`` of the symbols with a bar at this timestamp (``own``: their
        per-symbol member columns, ``inputs``: r1, ret, vol, volu), NaN for non-members; advances ``U``."""
        names = cross_sectional_columns(self.cfg)
        out = np.full((len(states), len(names)), np.nan)
        is_member = ~np.isnan(own).any(axis=1) & ~np.isnan(inputs).any(axis=1)
        idx = np.flatnonzero(is_member)
        if len(idx):
            x = inputs[idx]
            n = len(idx)
            col = {name: k for k, name in enumerate(names)}
            for k, key in ((1, "ret"), (2, "vol"), (3, "volume")):
                v = x[:, k]
                std = float(np.std(v))
                out[idx, col[f"xs_{key}_rank"]] = (rankdata(v, method="average") - 1.0) / (n - 1.0) if n > 1 else 0.5
                out[idx, col[f"xs_{key}_z"]] = (v - v.mean()) / std if std > _FLAT else 0.0
            u_t = float(x[:, 0].mean())
            self._U += u_t
            out[idx, col["xs_universe_ret"]] = u_t
            nb = self.cfg.beta_window
            for j, i in enumerate(idx):
                st = states[i]
                st.ring_r.append(float(x[j, 0]))
                st.ring_u.append(self._U - st.u_prev)
                if len(st.ring_r) == nb:
                    beta, corr = beta_corr(np.fromiter(st.ring_r, np.float64, nb),
                                           np.fromiter(st.ring_u, np.float64, nb), nb)
                    out[i, col["xs_beta"]], out[i, col["xs_corr"]] = beta[-1], corr[-1]
        for st in states:
            st.u_prev = self._U
        return out

    def closes(self) -> tuple[np.ndarray, list[pd.Timestamp]]:
        """The last ``keep_closes`` closes of the universe's calendar (the union of the symbols' bar times):
        ``(rows, len(symbols))`` float64, NaN where a symbol has no bar, and their times, oldest first; what the
        turbulence index looks back on (:func:`raytrade.serving.portfolio_steps.turbulence_at_last`)."""
        return np.asarray(self._closes), list(self._times)

    # ---- reading --------------------------------------------------------------------------------
    def held(self, symbol: str, bar: Mapping[str, Any]) -> bool | None:
        """Whether ``bar`` of ``symbol`` is one of the last bars the state holds: True (same time and values), False
        (a held time with other values), None (not held)."""
        return self._state[symbol].held({TIMESTAMP: _utc(bar[TIMESTAMP]), **{c: float(bar[c]) for c in OHLCV_COLUMNS}})

    def last_bar(self, symbol: str) -> pd.Timestamp:
        """The latest bar time of ``symbol``."""
        return self._state[symbol].last

    def window(self, symbol: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``symbol``'s forecaster input at :attr:`timestamp`: its last ``lookback`` complete rows ``(lookback,
        len(columns))`` float64 unscaled, oldest first, and their times (``datetime64[ns]``, UTC); None when the
        symbol has no bar at :attr:`timestamp` (not tradable there) or fewer than ``lookback`` complete rows ending at
        its last bar."""
        st = self._state[symbol]
        if st.last != self.timestamp or st.last_complete != st.last or len(st.rows) < self.lookback:
            return None
        return np.asarray(st.rows), np.fromiter((t.value for t in st.times), np.int64, len(st.times)).view(
            "datetime64[ns]")

    def complete_at_last_bar(self, symbol: str) -> tuple[bool, int]:
        """(``symbol``'s row at its last bar is complete and ``lookback`` complete rows are held, rows held)."""
        st = self._state[symbol]
        return st.last_complete == st.last and len(st.rows) >= self.lookback, len(st.rows)
