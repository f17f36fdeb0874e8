"""A universe of symbols: load and validate it symbol by symbol, and align its calendars on one panel.

Alignment policy (``"union_calendar"``; the reference for every multi-asset stage)
=================================================================================

Symbols start on different days, miss days and trade on different calendars (weekday equities next to
24/7 crypto). :class:`Panel` puts the kept symbols on ONE calendar without inventing prices:

- **Calendar.** The sorted union of every kept symbol's bar timestamps (UTC). An asset has a bar at ``t``
  (``has_bar[t, a]``) only where its own data has one; elsewhere its ``open/high/low/close/volume`` are NaN.
  Weekday equities next to crypto: the calendar has the weekends, the equities have no bar there.
- **Marks, not fills.** A missing bar is never filled with a price. :meth:`Panel.marks` carries the last real
  close forward only as a mark-to-market value: NaN before the asset's first bar, the last close at and
  after a missed bar (and after the asset's last bar, where it cannot trade). Marks use data at times <= t only.
- **Returns.** :meth:`Panel.next_log_returns` is ``ln(mark[t+1] / mark[t])``, 0 where the asset has no mark at
  ``t`` or ``t+1`` (before it lists), NaN on the last row (the future is unknown). Across a missed bar the
  row before it earns 0 and the next real bar earns ``ln(close_next / close_last)``: the move is credited
  once, from the last real close, and summing an asset's returns over its life gives
  ``ln(last close / first close)``. :meth:`Panel.next_gap_returns` is ``ln(open[t+1] / mark[t])`` where the
  asset has a bar at ``t+1`` and a mark at ``t`` (else 0; last row NaN): with ``fill: next_open`` the old
  position earns the gap and the new one the rest of the bar, ``next_log_returns - next_gap_returns``.
- **Tradable mask.** :meth:`Panel.fillable` says whether an order decided at the close of ``t`` can fill:
  ``"close"`` needs a bar at ``t``, ``"next_open"`` a bar at ``t+1`` (never on the last row). Where an asset
  is not fillable the accounting holds its units (no trade).

Loading (:func:`load_universe`)
===============================

read (:func:`~raytrade.data.ingest.read_many`) -> pick ``symbols`` (in the order given) -> keep bars with
``start <= timestamp <= end`` -> validate and apply ``policy`` to EACH symbol's rows on their own
(:func:`~raytrade.data.validation.apply_policy`), so one broken symbol can be excluded (``symbol_policy``)
while the others go on -> keep the last ``max_bars`` bars per symbol -> refuse mixed bar intervals ->
:class:`Universe` with its :class:`Panel`. A single-symbol file is a universe of one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from raytrade.data.ingest import read_many
from raytrade.data.readers import keep_last_bars
from raytrade.data.schema import OHLCV_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.data.validation import RULES, Policy, ValidationReport, apply_policy, validate
from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError

if TYPE_CHECKING:
    from raytrade.config import DataConfig

log = logging.getLogger(__name__)

#: name of the alignment policy described in this module's docstring (written to report.json ``data``)
ALIGNMENT_POLICY = "union_calendar"
SymbolPolicy = Literal["fail", "exclude"]
Fill = Literal["close", "next_open"]
TimeLike = str | datetime | pd.Timestamp | None
_SHOWN = 8  # how many available symbols an error message lists


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _iso(stamp: pd.Timestamp | None) -> str | None:
    return None if stamp is None else stamp.isoformat()


def utc_timestamp(value: TimeLike, field_name: str) -> pd.Timestamp | None:
    """A date/time as a tz-aware UTC timestamp: naive values are taken as UTC, aware ones converted.

    Raises:
        ConfigError: ``value`` does not parse, naming ``field_name`` (e.g. ``data.start``).
    """
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{field_name}: not a date/time: {value!r}") from exc
    if pd.isna(stamp):
        raise ConfigError(f"{field_name}: not a date/time: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


# --------------------------------------------------------------------------------------------------
# the panel


@dataclass(frozen=True, eq=False)
class Panel:
    """The kept symbols on one union calendar (see the module docstring for the alignment policy).

    Attributes:
        timestamps: ``(T,)`` the calendar, sorted, unique, tz-aware UTC (bar open times).
        symbols: ``(A,)`` the assets, in universe order.
        open, high, low, close, volume: ``(T, A)`` float64; prices in quote currency, volume in base units;
            NaN where the asset has no bar at ``t``.
        has_bar: ``(T, A)`` bool, True where the asset has a real bar at ``t``.
        prior_close: ``(A,)`` the last close before ``timestamps[0]`` (NaN when none): what a panel cut by
            :meth:`slice_time` carries from before its first row, so marks and returns don't depend on where
            it was cut. NaN for a panel built from bars.

    Every array is read-only.
    """

    timestamps: pd.DatetimeIndex
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    has_bar: np.ndarray
    prior_close: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        shape = (len(self.timestamps), len(self.symbols))
        for name in (*OHLCV_COLUMNS, "has_bar"):
            array = getattr(self, name)
            if array.shape != shape:
                raise ValueError(f"Panel.{name} has shape {array.shape}, expected (T, A) = {shape}")
            expected = np.bool_ if name == "has_bar" else np.float64
            if array.dtype != expected:
                raise ValueError(f"Panel.{name} has dtype {array.dtype}, expected {np.dtype(expected)}")
            _readonly(array)
        prior = np.full(shape[1], np.nan) if self.prior_close is None else np.asarray(self.prior_close, float)
        if prior.shape != (shape[1],):
            raise ValueError(f"Panel.prior_close has shape {prior.shape}, expected (A,) = ({shape[1]},)")
        object.__setattr__(self, "prior_close", _readonly(prior))

    @classmethod
    def from_bars(cls, bars: pd.DataFrame, symbols: Sequence[str] | None = None) -> Panel:
        """Build the panel of a validated long bar table (:func:`~raytrade.data.validation.validate_bars`).

        Args:
            bars: canonical bars, any row order; timestamps tz-aware (converted to UTC).
            symbols: the assets and their order (default: order of first appearance); a symbol with no
                rows gets an all-NaN column.

        Raises:
            DataValidationError: ``duplicate_timestamp`` when a symbol has two bars at one timestamp.
            ValueError: ``bars`` holds a symbol not in ``symbols``.
        """
        names = [str(s) for s in bars[SYMBOL]]
        order = tuple(dict.fromkeys(names)) if symbols is None else tuple(str(s) for s in symbols)
        column = {s: k for k, s in enumerate(order)}
        unknown = sorted(set(names) - set(column))
        if unknown:
            raise ValueError(f"bars hold symbols not in symbols: {unknown[:_SHOWN]}")
        stamps = pd.DatetimeIndex(bars[TIMESTAMP]).tz_convert("UTC")
        ns = stamps.as_unit("ns").asi8
        calendar_ns = np.unique(ns)
        rows = np.searchsorted(calendar_ns, ns)
        cols = np.fromiter((column[s] for s in names), dtype=np.int64, count=len(names))
        shape = (calendar_ns.size, len(order))
        has_bar = np.zeros(shape, dtype=bool)
        has_bar[rows, cols] = True
        if int(has_bar.sum()) != len(bars):
            flat = rows * max(shape[1], 1) + cols
            dup = pd.Series(flat).duplicated().to_numpy()
            first = int(np.flatnonzero(dup)[0])
            raise DataValidationError(
                "duplicate_timestamp", f"two bars of {names[first]} at {stamps[first].isoformat()}",
                column=TIMESTAMP, symbol=names[first], timestamp=stamps[first], count=int(dup.sum()))
        values = {}
        for name in OHLCV_COLUMNS:
            array = np.full(shape, np.nan)
            array[rows, cols] = bars[name].to_numpy(dtype=float)
            values[name] = array
        calendar = pd.DatetimeIndex(calendar_ns.astype("datetime64[ns]")).tz_localize("UTC")
        calendar.name = TIMESTAMP
        return cls(timestamps=calendar, symbols=order, has_bar=has_bar, **values)

    @property
    def shape(self) -> tuple[int, int]:
        """``(T, A)``."""
        return len(self.timestamps), len(self.symbols)

    def first_bar(self) -> np.ndarray:
        """``(A,)`` int: calendar row of each asset's first bar (-1 when it has none)."""
        any_bar = self.has_bar.any(axis=0)
        return np.where(any_bar, self.has_bar.argmax(axis=0), -1)

    def last_bar(self) -> np.ndarray:
        """``(A,)`` int: calendar row of each asset's last bar (-1 when it has none)."""
        any_bar = self.has_bar.any(axis=0)
        return np.where(any_bar, len(self.timestamps) - 1 - self.has_bar[::-1].argmax(axis=0), -1)

    def life(self) -> np.ndarray:
        """``(T, A)`` bool: rows from the asset's first bar to its last bar, inclusive."""
        rows = np.arange(len(self.timestamps))[:, None]
        first, last = self.first_bar(), self.last_bar()
        return (first >= 0) & (rows >= first) & (rows <= last)

    def marks(self) -> np.ndarray:
        """``(T, A)`` float64 mark-to-market price: the last real close at or before ``t`` (starting from
        :attr:`prior_close`), NaN before the asset's first bar. Never a tradable price: it only values a
        holding across bars the asset does not have."""
        seeded = np.vstack([self.prior_close[None, :], self.close])
        return pd.DataFrame(seeded).ffill().to_numpy()[1:]

    def next_log_returns(self) -> np.ndarray:
        """``(T, A)`` float64: ``ln(mark[t+1] / mark[t])``, the log return of holding from the close of ``t``
        to the close of ``t+1``; 0 where the asset has no mark at ``t`` or ``t+1``; last row NaN.

        Known only at ``t+1``: for accounting and labels, never a feature at ``t``.
        """
        m = self.marks()
        out = np.full(m.shape, np.nan)
        if len(m) > 1:
            now, nxt = m[:-1], m[1:]
            ok = np.isfinite(now) & np.isfinite(nxt)
            out[:-1] = np.log(np.where(ok, nxt, 1.0) / np.where(ok, now, 1.0))
        return out

    def next_gap_returns(self) -> np.ndarray:
        """``(T, A)`` float64: ``ln(open[t+1] / mark[t])`` where the asset has a bar at ``t+1`` and a mark at
        ``t``, else 0; last row NaN. The part of :meth:`next_log_returns` earned before a ``next_open`` fill."""
        m = self.marks()
        out = np.full(m.shape, np.nan)
        if len(m) > 1:
            now, nxt_open = m[:-1], self.open[1:]
            ok = self.has_bar[1:] & np.isfinite(now)
            out[:-1] = np.log(np.where(ok, nxt_open, 1.0) / np.where(ok, now, 1.0))
        return out

    def fillable(self, fill: Fill) -> np.ndarray:
        """``(T, A)`` bool: can an order decided at the close of ``t`` fill for the asset?

        ``"close"``: it has a bar at ``t``; ``"next_open"``: it has a bar at ``t+1`` (last row False).

        Raises:
            ValueError: ``fill`` is neither ``"close"`` nor ``"next_open"``.
        """
        if fill == "close":
            return self.has_bar.copy()
        if fill == "next_open":
            out = np.zeros(self.has_bar.shape, dtype=bool)
            out[:-1] = self.has_bar[1:]
            return out
        raise ValueError(f"fill must be 'close' or 'next_open', got {fill!r}")

    def index_of(self, timestamps: TimeLike | Sequence[TimeLike] | pd.DatetimeIndex) -> np.ndarray:
        """Calendar rows ``(n,)`` of the given timestamps (naive ones are UTC).

        Raises:
            KeyError: a timestamp is not on the calendar (the first one is named).
        """
        if isinstance(timestamps, str | datetime | pd.Timestamp):
            timestamps = [timestamps]
        wanted = pd.DatetimeIndex([utc_timestamp(t, "timestamp") for t in timestamps])
        rows = self.timestamps.get_indexer(wanted)
        if (rows < 0).any():
            raise KeyError(f"{wanted[int(np.flatnonzero(rows < 0)[0])].isoformat()} is not on the calendar")
        return rows

    def slice_time(self, start: TimeLike = None, end: TimeLike = None) -> Panel:
        """The rows with ``start <= timestamp <= end`` (either bound optional; naive values are UTC), with
        :attr:`prior_close` set to each asset's mark just before the first row kept.

        Raises:
            ConfigError: a bound does not parse.
        """
        lo, hi = utc_timestamp(start, "start"), utc_timestamp(end, "end")
        keep = np.ones(len(self.timestamps), dtype=bool)
        if lo is not None:
            keep &= self.timestamps >= lo
        if hi is not None:
            keep &= self.timestamps <= hi
        rows = np.flatnonzero(keep)
        first = int(rows[0]) if rows.size else len(self.timestamps)
        prior = self.marks()[first - 1] if first > 0 else self.prior_close
        return Panel(timestamps=self.timestamps[rows], symbols=self.symbols,
                     **{name: getattr(self, name)[rows].copy() for name in (*OHLCV_COLUMNS, "has_bar")},
                     prior_close=prior.copy())

    def to_frame(self, values: np.ndarray | str) -> pd.DataFrame:
        """A ``(T, A)`` array (or the name of a panel array, e.g. ``"close"``) as a DataFrame indexed by
        :attr:`timestamps` with one column per symbol."""
        array = getattr(self, values) if isinstance(values, str) else values
        return pd.DataFrame(array, index=self.timestamps, columns=list(self.symbols))


# --------------------------------------------------------------------------------------------------
# the universe


@dataclass(frozen=True, eq=False)
class Universe:
    """The validated bars of a universe of symbols and their panel.

    Attributes:
        path: the source read (None when a DataFrame was given).
        bars: long table of the kept symbols, schema as :func:`~raytrade.data.ingest.read_many` (plus
            ``repaired`` under policy ``repair``), validated; rows grouped by symbol in :attr:`symbols` order,
            each symbol's rows in their input order (time order, which validation guarantees); fresh RangeIndex.
        symbols: the kept symbols, in the order of ``symbols`` (or of first appearance in the input).
        excluded: ``{symbol: one-line reason}`` of the symbols left out under ``symbol_policy="exclude"``.
        validation: ONE report merging every examined symbol's report (kept and excluded): issues
            errors first, then warnings, by rule, symbols in universe order; ``n_rows`` the rows validated
            (inside ``start``/``end``); ``symbols`` each symbol's ``rows``/``interval_s``; ``dropped`` and
            ``inserted`` per symbol; an example's ``row`` is its position in the table as read. Like
            :func:`~raytrade.data.validation.apply_policy`'s report, its ``ok`` describes the input.
        panel: the kept symbols on the union calendar.
        symbol_policy: ``"fail"`` or ``"exclude"``.
        start, end: the time window applied (UTC, inclusive), or None.
    """

    path: Path | None
    bars: pd.DataFrame
    symbols: tuple[str, ...]
    excluded: dict[str, str]
    validation: ValidationReport
    panel: Panel
    symbol_policy: str = "fail"
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None

    @property
    def interval_s(self) -> float | None:
        """The bar interval in seconds shared by the kept symbols (None when none could be inferred)."""
        values = [self.validation.symbols[s]["interval_s"] for s in self.symbols]
        return next((v for v in values if v is not None), None)

    def summary(self) -> dict[str, Any]:
        """JSON-able description for report.json's ``data`` section.

        Returns:
            ``{"alignment", "path", "symbols", "interval_s", "start", "end", "policy", "symbol_policy",
            "calendar": {"bars", "first", "last"}, "per_symbol": {symbol: {"first", "last", "bars",
            "missing_bars"}}, "excluded": {symbol: reason}}``; timestamps ISO 8601; ``missing_bars`` counts
            the calendar rows inside the symbol's own life (first to last bar) where it has no bar.
        """
        p = self.panel
        first, last = p.first_bar(), p.last_bar()
        missing = (p.life() & ~p.has_bar).sum(axis=0)
        per_symbol = {
            s: {"first": p.timestamps[first[k]].isoformat(), "last": p.timestamps[last[k]].isoformat(),
                "bars": int(p.has_bar[:, k].sum()), "missing_bars": int(missing[k])}
            for k, s in enumerate(p.symbols)
        }
        return {
            "alignment": ALIGNMENT_POLICY,
            "path": None if self.path is None else str(self.path),
            "symbols": list(self.symbols),
            "interval_s": self.interval_s,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "policy": self.validation.policy,
            "symbol_policy": self.symbol_policy,
            "calendar": {"bars": len(p.timestamps), "first": p.timestamps[0].isoformat(),
                         "last": p.timestamps[-1].isoformat()},
            "per_symbol": per_symbol,
            "excluded": dict(self.excluded),
        }


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _merge_reports(reports: dict[str, ValidationReport], policy: str) -> ValidationReport:
    rank = {rule: k for k, rule in enumerate(RULES)}
    issues = [issue for report in reports.values() for issue in report.issues]
    issues.sort(key=lambda i: (i.severity != "error", rank.get(i.rule, len(rank))))  # stable: universe order
    dropped: dict[str, dict[str, int]] = {}
    inserted: dict[str, int] = {}
    for report in reports.values():
        for rule, per_symbol in report.dropped.items():
            dropped.setdefault(rule, {}).update(per_symbol)
        inserted.update(report.inserted)
    symbols = {s: dict(v) for report in reports.values() for s, v in report.symbols.items()}
    return ValidationReport(issues, sum(r.n_rows for r in reports.values()), symbols, policy, dropped, inserted)


def _renumber_examples(report: ValidationReport, positions: np.ndarray) -> None:
    """Examples' ``row`` from the symbol's own table to the table as read."""
    for issue in report.issues:
        for example in issue.examples:
            row = example.get("row")
            if isinstance(row, int) and 0 <= row < positions.size:
                example["row"] = int(positions[row])


def load_universe(
    source: str | Path | pd.DataFrame,
    *,
    symbols: Sequence[str] | None = None,
    policy: Policy = "fail",
    symbol_policy: SymbolPolicy = "fail",
    start: TimeLike = None,
    end: TimeLike = None,
    max_bars: int | None = None,
    symbol: str | None = None,
    min_bars: int | None = None,
) -> Universe:
    """Load a universe: read, pick symbols, cut to a time window, validate per symbol, align on one calendar.

    Args:
        source: a file, directory or glob (read with :func:`~raytrade.data.ingest.read_many`), or a canonical
            bar table (never modified).
        symbols: the universe, in this order (default: every symbol, in order of first appearance).
        policy: ``fail`` / ``drop`` / ``repair``, applied to each symbol's rows on their own
            (:func:`~raytrade.data.validation.apply_policy`).
        symbol_policy: a symbol whose rows break a rule under ``policy``, have no bar in the window or fewer
            than ``min_bars`` bars: ``"fail"`` raises that error; ``"exclude"`` leaves the symbol out, logs a
            warning and records ``{symbol: one-line reason}`` in :attr:`Universe.excluded`.
        start, end: keep bars with ``start <= timestamp <= end`` (inclusive; naive values are UTC; a date is
            its 00:00 UTC); applied before validation, so bars outside the window are not judged.
        max_bars: keep only the last ``max_bars`` bars of each symbol (after validation).
        symbol: passed to ``read_many`` (assigned to a single file without a symbol column, a filter otherwise).
        min_bars: a symbol with fewer bars (after ``max_bars``) is treated under ``symbol_policy``.

    Returns:
        The :class:`Universe`.

    Raises:
        ConfigError: ``data.symbols`` names symbols not in the input (the missing ones and some available);
            ``data.start``/``data.end`` do not parse or start > end; ``data.max_bars``/``min_bars`` not > 0;
            the kept symbols have different bar intervals (two symbols and their intervals named).
        DataValidationError: from reading (see ``read_many``); a structural error of the table; a symbol's
            rule under ``symbol_policy="fail"`` (rule, column, symbol, first bad timestamp), ``empty`` when a
            symbol has no bar in the window; ``empty_symbol`` for rows without a symbol;
            ``all_symbols_excluded`` when no symbol is left (each named with its reason).
        InsufficientDataError: a symbol has fewer than ``min_bars`` bars under ``symbol_policy="fail"``.
        ValueError: unknown ``policy`` or ``symbol_policy``.
    """
    if policy not in ("fail", "drop", "repair"):
        raise ValueError(f"policy must be 'fail', 'drop' or 'repair', got {policy!r}")
    if symbol_policy not in ("fail", "exclude"):
        raise ValueError(f"symbol_policy must be 'fail' or 'exclude', got {symbol_policy!r}")
    for name, value in (("data.max_bars", max_bars), ("min_bars", min_bars)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name}: must be > 0, got {value}")
    lo, hi = utc_timestamp(start, "data.start"), utc_timestamp(end, "data.end")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"data.start {lo.isoformat()} is after data.end {hi.isoformat()}")

    if isinstance(source, pd.DataFrame):
        path, where, read = None, "the input bars", source
        if symbol is not None and SYMBOL in read.columns:
            read = read[read[SYMBOL] == symbol]
    else:
        path = Path(source)
        where, read = str(source), read_many(source, symbol)
    if TIMESTAMP not in read.columns or SYMBOL not in read.columns or read.empty or not isinstance(
            read[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        validate(read, include_warnings=False).raise_first()  # missing_columns / timestamp_type / empty
    no_symbol = read[SYMBOL].isna().to_numpy()
    if no_symbol.any():
        raise DataValidationError("empty_symbol", f"bars without a symbol in {where}", column=SYMBOL,
                                  timestamp=read[TIMESTAMP].iloc[int(np.flatnonzero(no_symbol)[0])],
                                  count=int(no_symbol.sum()))

    names = read[SYMBOL].astype(str).to_numpy()
    codes, available = pd.factorize(names, sort=False)
    available = [str(s) for s in available]
    if symbols is None:
        wanted = available
    else:
        wanted = [str(s) for s in symbols]
        missing = [s for s in wanted if s not in set(available)]
        if missing:
            shown = ", ".join(available[:_SHOWN]) + (", ..." if len(available) > _SHOWN else "")
            raise ConfigError(f"data.symbols: {missing} not in {where} (it holds {len(available)} symbol(s): "
                              f"{shown})")
    in_window = np.ones(len(read), dtype=bool)
    if lo is not None:
        in_window &= (read[TIMESTAMP] >= lo).to_numpy()
    if hi is not None:
        in_window &= (read[TIMESTAMP] <= hi).to_numpy()

    window = f"between {_iso(lo) or 'the start'} and {_iso(hi) or 'the end'}"
    kept: dict[str, pd.DataFrame] = {}
    reports: dict[str, ValidationReport] = {}
    excluded: dict[str, str] = {}
    code_of = {s: k for k, s in enumerate(available)}
    for name in wanted:
        positions = np.flatnonzero((codes == code_of[name]) & in_window)
        rows = read.iloc[positions]
        report: ValidationReport | None = None
        try:
            if rows.empty:
                raise DataValidationError("empty", f"symbol {name!r} has no bar {window} in {where}",
                                          column=TIMESTAMP, symbol=name)
            try:
                clean, report = apply_policy(rows, policy)
            except DataValidationError as err:
                if err.symbol is not None:
                    raise
                # e.g. ``drop`` left no row: the table-level error of the symbol's own table, named
                raise DataValidationError(err.rule, f"symbol {name!r} under policy {policy!r}: {err.message}",
                                          column=err.column,
                                          symbol=name, timestamp=err.timestamp, count=err.count) from err
            if max_bars is not None:
                clean = keep_last_bars(clean, max_bars)
            if min_bars is not None and len(clean) < min_bars:
                raise InsufficientDataError(f"symbol {name!r} has {len(clean)} bar(s) {window}, fewer than "
                                            f"min_bars={min_bars}")
        except (DataValidationError, InsufficientDataError) as err:
            if symbol_policy == "fail":
                raise
            excluded[name] = _one_line(err)
            log.warning("excluding symbol %s from the universe: %s", name, excluded[name])
            if report is None:
                report = (validate(rows) if not rows.empty
                          else ValidationReport([], 0, {name: {"rows": 0, "interval_s": None}}))
                report.policy = policy
        else:
            kept[name] = clean
        _renumber_examples(report, positions)
        reports[name] = report

    if not kept:
        listed = "; ".join(f"{s}: {reason}" for s, reason in excluded.items())
        raise DataValidationError("all_symbols_excluded", f"every symbol of {where} was excluded: {listed}",
                                  column=SYMBOL)
    intervals = {s: reports[s].symbols.get(s, {}).get("interval_s") for s in kept}
    known = [(s, v) for s, v in intervals.items() if v is not None]
    for s, v in known[1:]:
        if v != known[0][1]:
            raise ConfigError(
                f"data.symbols: one bar interval per universe; {known[0][0]} has {known[0][1]:g} s bars and "
                f"{s} has {v:g} s bars: resample them to one interval or pick symbols of one interval")

    order = tuple(kept)
    frames = list(kept.values())
    bars = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return Universe(path=path, bars=bars, symbols=order, excluded=excluded,
                    validation=_merge_reports(reports, policy), panel=Panel.from_bars(bars, order),
                    symbol_policy=symbol_policy, start=lo, end=hi)


def universe_from_config(cfg: DataConfig, path: str | Path | None = None, min_bars: int | None = None) -> Universe:
    """:func:`load_universe` with the fields of a :class:`raytrade.config.DataConfig` (``path`` overrides
    ``cfg.path``). Raises what :func:`load_universe` raises."""
    return load_universe(path or cfg.path, symbols=cfg.symbols, policy=cfg.policy,
                         symbol_policy=cfg.symbol_policy, start=cfg.start, end=cfg.end, max_bars=cfg.max_bars,
                         symbol=cfg.symbol, min_bars=min_bars)


__all__ = [
    "ALIGNMENT_POLICY",
    "Fill",
    "Panel",
    "SymbolPolicy",
    "Universe",
    "load_universe",
    "universe_from_config",
    "utc_timestamp",
]
