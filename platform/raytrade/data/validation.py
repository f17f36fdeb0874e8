"""Full validation report for OHLCV bars, and the policy that decides what to do about it.

:func:`validate` checks every rule for every symbol and returns a :class:`ValidationReport` (it
never raises for bad data and never changes the table). :func:`apply_policy` turns a report into an
action: ``fail`` (raise the first error), ``drop`` (remove the rows that break a row-level error rule)
or ``repair`` (drop, then insert the bars missing from intraday gaps). The strict check
:func:`raytrade.data.validation.validate_bars` is ``validate(...)`` followed by
:meth:`ValidationReport.raise_first`, so each rule has exactly one implementation, here.

Rules, in the order they are checked (the first *error* in this order is the one raised):

======================= ======== =================================================================
rule                    severity broken when
======================= ======== =================================================================
``missing_columns``     error    a column of :data:`~raytrade.data.schema.BAR_COLUMNS` is absent
``timestamp_type``      error    ``timestamp`` is not a timezone-aware datetime column
``dtype``               error    an OHLCV column is not numeric (int/float; bool and text are not)
``empty``               error    the table has no rows
``nan``                 error    NaN/inf in an OHLCV column, or NaT in ``timestamp``
``non_positive_price``  error    open/high/low/close <= 0
``negative_volume``     error    volume < 0
``ohlc_relation``       error    ``high < max(open, close, low)`` (column ``high``) or
                                 ``low > min(open, close)`` (column ``low``), relative tolerance 1e-9
``duplicate_timestamp`` error    a second bar for the same symbol and timestamp (the first is not counted)
``unsorted_timestamps`` error    a bar older than the previous bar of its symbol (in table order)
``gap``                 warning  bars missing against the symbol's inferred bar interval
``zero_volume``         warning  bars with volume == 0 (counted as bars and as runs of consecutive bars)
``outlier_return``      warning  a 1-bar log return further than ``outlier_mad`` scaled MADs from the median
======================= ======== =================================================================

The first four are structural: once one is found the later rules are meaningless and are not run.
Warnings never make a report fail.

Gaps: the bar interval of a symbol is the median of its positive timestamp differences. Intraday
(interval < 1 day), a difference ``d`` hides ``ceil(d / interval) - 1`` bars (a difference of
``k * interval`` means ``k - 1`` missing bars). For daily or longer intervals the bars are counted in
trading days with :func:`numpy.busday_count`: Saturdays and Sundays are not trading days unless at
least 10% of the symbol's bars fall on a weekend (then every calendar day is, e.g. crypto). Exchange
holidays are not known, so a holiday shows as a 1-bar gap (about 9 a year on US equities).
Intraday gaps of markets that close overnight or at weekends are reported as gaps too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from raytrade.data.schema import BAR_COLUMNS, OHLCV_COLUMNS, PRICE_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.errors import DataValidationError

Severity = Literal["error", "warning"]
Policy = Literal["fail", "drop", "repair"]

#: every rule and its severity, in the order the rules are checked and reported
RULES: dict[str, Severity] = {
    "missing_columns": "error",
    "timestamp_type": "error",
    "dtype": "error",
    "empty": "error",
    "nan": "error",
    "non_positive_price": "error",
    "negative_volume": "error",
    "ohlc_relation": "error",
    "duplicate_timestamp": "error",
    "unsorted_timestamps": "error",
    "gap": "warning",
    "zero_volume": "warning",
    "outlier_return": "warning",
}
#: rules about the table's shape; when one is broken the rules after it are not checked
STRUCTURAL_RULES = ("missing_columns", "timestamp_type", "dtype", "empty")
#: error rules about single rows: policy ``drop`` removes the rows that break them
ROW_RULES = ("nan", "non_positive_price", "negative_volume", "ohlc_relation", "duplicate_timestamp")
#: the name of the boolean column policy ``repair`` adds (True on inserted bars)
REPAIRED = "repaired"
#: relative tolerance on the OHLC relation, for float round-off in stored prices only
OHLC_RTOL = 1e-9
#: scale making the median absolute deviation a consistent estimator of a normal standard deviation
MAD_SCALE = 1.4826
#: the same for the mean absolute deviation, used when the MAD is 0 (more than half the returns equal)
MEAN_AD_SCALE = math.sqrt(math.pi / 2)
#: a symbol whose bars fall on Saturday/Sunday at least this often trades every calendar day
WEEKEND_SHARE = 0.1
#: how many offending rows each issue keeps as examples
MAX_EXAMPLES = 5

_DAY_NS = 86_400 * 10**9
_OHLC_COLUMNS = list(PRICE_COLUMNS)


@dataclass
class Issue:
    """One broken rule for one symbol (or for the whole table, when ``symbol`` is None).

    Attributes:
        rule: rule name, a key of :data:`RULES`.
        severity: ``"error"`` (the bars are unusable as they are) or ``"warning"`` (reported only).
        symbol: the symbol whose bars break the rule; None for table-level rules.
        column: the column at fault; None when the rule is about whole rows.
        count: rows affected (for ``gap``: number of gaps; for ``zero_volume``: zero-volume bars);
            None for table-level structural rules.
        first_timestamp: timestamp of the first offending row in table order (for ``gap``: the bar
            after the first gap; for time-ordered warnings: the first in time); None if not applicable.
        examples: up to :data:`MAX_EXAMPLES` first offending rows as JSON-able dicts: ``row``
            (0-based position in the table), ``timestamp`` (ISO 8601) and the relevant column values.
            Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``.
        message: one human-readable sentence.
        missing_bars: ``gap`` only: total bars missing across the symbol's gaps.
        runs: ``zero_volume`` only: runs of consecutive zero-volume bars.
        action: what :func:`apply_policy` did about it (``"dropped"``, ``"filled"``) or None.
    """

    rule: str
    severity: Severity
    symbol: str | None
    column: str | None
    count: int | None
    first_timestamp: pd.Timestamp | None
    examples: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    missing_bars: int | None = None
    runs: int | None = None
    action: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The issue as JSON-serialisable built-ins (``first_timestamp`` as an ISO 8601 string)."""
        out = dataclasses.asdict(self)
        out["first_timestamp"] = _iso(self.first_timestamp)
        return out


@dataclass
class ValidationReport:
    """Everything :func:`validate` found in a bar table.

    Attributes:
        issues: errors first, then warnings, each group in :data:`RULES` order; within a rule and
            column, symbols in the order of their first offending row.
        n_rows: rows in the validated table.
        symbols: per symbol (in order of first appearance) ``{"rows": int, "interval_s": float | None}``,
            the inferred bar interval in seconds (None when it cannot be inferred).
        policy: the :func:`apply_policy` policy that produced this report, None from :func:`validate`.
        dropped: rows removed by policy ``drop``/``repair``: ``{rule: {symbol: rows}}``; each dropped row
            is counted once, under the first rule (in :data:`ROW_RULES` order) it breaks.
        inserted: bars inserted into gaps by policy ``repair``: ``{symbol: bars}``.
    """

    issues: list[Issue]
    n_rows: int
    symbols: dict[str, dict[str, Any]]
    policy: str | None = None
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no rule of severity ``error`` is broken (warnings don't count)."""
        return self.first_error() is None

    def errors(self) -> list[Issue]:
        """The issues of severity ``error``, in rule order."""
        return [i for i in self.issues if i.severity == "error"]

    def warnings(self) -> list[Issue]:
        """The issues of severity ``warning``, in rule order."""
        return [i for i in self.issues if i.severity == "warning"]

    def first_error(self) -> Issue | None:
        """The error :func:`raytrade.data.validation.validate_bars` raises, or None when the bars pass."""
        return next((i for i in self.issues if i.severity == "error"), None)

    def raise_first(self) -> None:
        """Raise the first error as a :class:`DataValidationError`; do nothing when :attr:`ok`.

        The exception carries the issue's rule, column, symbol and first timestamp; its ``count`` is the
        total over all symbols of the rows breaking that rule (in that column, except for
        ``ohlc_relation`` which counts rows breaking either side), as ``validate_bars`` always reported.

        Raises:
            DataValidationError: if the report has an error.
        """
        first = self.first_error()
        if first is None:
            return
        count = first.count
        if count is not None:
            count = sum(
                i.count or 0
                for i in self.errors()
                if i.rule == first.rule and (i.column == first.column or first.rule == "ohlc_relation")
            )
        raise DataValidationError(
            first.rule, first.message, column=first.column, symbol=first.symbol,
            timestamp=first.first_timestamp, count=count,
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per issue: rule, severity, symbol, column, count, first_timestamp (UTC), message,
        missing_bars, runs, action."""
        columns = ["rule", "severity", "symbol", "column", "count", "first_timestamp", "message",
                   "missing_bars", "runs", "action"]
        frame = pd.DataFrame([{c: getattr(i, c) for c in columns} for i in self.issues], columns=columns)
        for col in ("count", "missing_bars", "runs"):
            frame[col] = frame[col].astype("Int64")
        frame["first_timestamp"] = pd.to_datetime(frame["first_timestamp"], utc=True)
        return frame

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable built-ins (``json.dumps`` works on it as is)."""
        return {
            "ok": self.ok,
            "n_rows": self.n_rows,
            "n_errors": len(self.errors()),
            "n_warnings": len(self.warnings()),
            "symbols": {s: dict(v) for s, v in self.symbols.items()},
            "policy": self.policy,
            "dropped": {r: dict(v) for r, v in self.dropped.items()},
            "inserted": dict(self.inserted),
            "issues": [i.to_dict() for i in self.issues],
        }

    def format_table(self) -> str:
        """A fixed-width text table for a terminal: a summary line, then one line per issue
        (or a ``no issues`` line), then what a policy dropped or inserted."""
        n_err, n_warn = len(self.errors()), len(self.warnings())
        lines = [f"{self.n_rows} rows, {len(self.symbols)} symbol(s): "
                 f"{'OK' if self.ok else 'FAILED'}, {n_err} error issue(s), {n_warn} warning issue(s)"]
        if not self.issues:
            lines.append("no issues")
        else:
            header = ("SEVERITY", "RULE", "SYMBOL", "COLUMN", "COUNT", "FIRST_TIMESTAMP", "MESSAGE")
            rows = [header] + [
                (i.severity, i.rule, i.symbol or "-", i.column or "-", "-" if i.count is None else str(i.count),
                 "-" if i.first_timestamp is None else str(i.first_timestamp),
                 i.message + (f" [{i.action}]" if i.action else ""))
                for i in self.issues
            ]
            widths = [max(len(r[k]) for r in rows) for k in range(len(header) - 1)]
            for r in rows:
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
        for rule, per_symbol in self.dropped.items():
            for symbol, n in per_symbol.items():
                lines.append(f"dropped {n} row(s) of {symbol} breaking {rule}")
        for symbol, n in self.inserted.items():
            lines.append(f"inserted {n} bar(s) into gaps of {symbol} (column {REPAIRED}=True)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# internals


def _iso(value: Any) -> str | None:
    """ISO 8601 text of a timestamp (None for None/NaT); other values as ``str``."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | np.datetime64):
        stamp = pd.Timestamp(value)
        return None if pd.isna(stamp) else stamp.isoformat()
    return str(value)


def _jsonable(value: Any) -> Any:
    """A cell value as a JSON built-in; non-finite floats as ``"nan"``/``"inf"``/``"-inf"``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, pd.Timestamp | np.datetime64):
        return _iso(value)
    return str(value)


def _fmt_interval(ns: int) -> str:
    """``3600e9`` -> ``"1h"``; the largest whole unit of d/h/min/s, else seconds."""
    for unit, size in (("d", _DAY_NS), ("h", 3600 * 10**9), ("min", 60 * 10**9), ("s", 10**9)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / 1e9:g}s"


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


class _Table:
    """Arrays computed once per table and shared by the rules (positions are 0-based, table order)."""

    def __init__(self, bars: pd.DataFrame) -> None:
        self.bars = bars
        self.n = len(bars)
        codes, uniques = pd.factorize(bars[SYMBOL].astype(str), sort=False)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.names = [str(u) for u in uniques]
        self.ts_series = bars[TIMESTAMP]
        self.ts_valid = self.ts_series.notna().to_numpy()
        ns = self.ts_series.array.as_unit("ns").asi8
        self.ts = np.where(self.ts_valid, ns, 0)  # ns since the epoch, UTC; 0 where NaT (never used)
        self.values = {c: bars[c].to_numpy(dtype=float, na_value=np.nan) for c in OHLCV_COLUMNS}

    def name(self, code: int) -> str:
        return self.names[code]

    def stamp(self, pos: int) -> pd.Timestamp | None:
        value = self.ts_series.iat[int(pos)]
        return None if pd.isna(value) else value

    def example(self, pos: int, columns: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"row": int(pos), "timestamp": _iso(self.stamp(pos))}
        for col in columns:
            out[col] = _jsonable(self.bars[col].iat[int(pos)])
        out.update({k: _jsonable(v) for k, v in extra.items()})
        return out

    def by_symbol(self, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Split increasing row positions by symbol: ``(code, positions)`` ordered by first position."""
        if positions.size == 0:
            return []
        codes = self.codes[positions]
        order = np.argsort(codes, kind="stable")
        uniq, starts = np.unique(codes[order], return_index=True)
        groups = np.split(positions[order], starts[1:])
        out = list(zip(uniq.tolist(), groups, strict=True))
        out.sort(key=lambda g: int(g[1][0]))
        return out


@dataclass
class _Gaps:
    """Intraday gaps of a table: one entry per gap (positions are table positions)."""

    prev_pos: np.ndarray
    prev_ts: np.ndarray
    missing: np.ndarray
    interval: np.ndarray


@dataclass
class _Analysis:
    report: ValidationReport
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    table: _Table | None = None
    gaps: _Gaps | None = None


def _row_issues(t: _Table, rule: str, column: str | None, mask: np.ndarray, message: str,
                columns: Sequence[str]) -> list[Issue]:
    """One issue per symbol with a True in ``mask`` (table order), ordered by first offending row."""
    issues = []
    for code, pos in t.by_symbol(np.flatnonzero(mask)):
        issues.append(Issue(
            rule, RULES[rule], t.name(code), column, int(pos.size), t.stamp(pos[0]),
            [t.example(p, columns) for p in pos[:MAX_EXAMPLES]], message,
        ))
    return issues


def _structural(bars: pd.DataFrame) -> list[Issue]:
    """missing_columns, then timestamp_type + dtype, then empty: the issues of the first stage that fails."""
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        return [Issue("missing_columns", "error", None, missing[0], None, None, [],
                      f"bars lack required column(s) {missing}; expected {list(BAR_COLUMNS)}")]
    issues = []
    ts = bars[TIMESTAMP]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        issues.append(Issue("timestamp_type", "error", None, TIMESTAMP, None, None, [],
                            f"timestamp must be a timezone-aware datetime column, got dtype {ts.dtype}"))
    for col in OHLCV_COLUMNS:
        series = bars[col]
        if _is_numeric(series):
            continue
        coerced = pd.to_numeric(series, errors="coerce") if not pd.api.types.is_bool_dtype(series.dtype) else None
        bad = np.ones(len(series), dtype=bool) if coerced is None else (coerced.isna() & series.notna()).to_numpy()
        pos = np.flatnonzero(bad)
        first = ts.iat[int(pos[0])] if pos.size and TIMESTAMP in bars.columns else None
        examples = [{"row": int(p), "timestamp": _jsonable(ts.iat[int(p)]), col: _jsonable(series.iat[int(p)])}
                    for p in pos[:MAX_EXAMPLES]]
        issues.append(Issue(
            "dtype", "error", None, col, int(pos.size), first if isinstance(first, pd.Timestamp) else None, examples,
            f"{col} must be a numeric column, got dtype {series.dtype} ({int(pos.size)} non-numeric value(s))",
        ))
    if issues:
        return issues
    if len(bars) == 0:
        return [Issue("empty", "error", None, None, None, None, [], "bar table has no rows")]
    return []


def _row_rules(t: _Table, masks: dict[str, np.ndarray]) -> list[Issue]:
    """nan, non_positive_price, negative_volume, ohlc_relation, duplicate_timestamp, unsorted_timestamps."""
    issues: list[Issue] = []
    v = t.values

    nan_mask = np.zeros(t.n, dtype=bool)
    for col in OHLCV_COLUMNS:
        bad = ~np.isfinite(v[col])
        nan_mask |= bad
        issues += _row_issues(t, "nan", col, bad, f"{col} has missing or non-numeric values", [col])
    issues += _row_issues(t, "nan", TIMESTAMP, ~t.ts_valid, "timestamp has missing values (NaT)", [])
    masks["nan"] = nan_mask | ~t.ts_valid

    with np.errstate(invalid="ignore"):
        nonpos = np.zeros(t.n, dtype=bool)
        for col in PRICE_COLUMNS:
            bad = v[col] <= 0
            nonpos |= bad
            issues += _row_issues(t, "non_positive_price", col, bad, f"{col} must be > 0", [col])
        masks["non_positive_price"] = nonpos

        neg = v["volume"] < 0
        issues += _row_issues(t, "negative_volume", "volume", neg, "volume must be >= 0", ["volume"])
        masks["negative_volume"] = neg

        o, h, lo, c = (v[col] for col in PRICE_COLUMNS)
        bad_high = h < np.maximum.reduce([o, c, lo]) * (1 - OHLC_RTOL)
        bad_low = lo > np.minimum(o, c) * (1 + OHLC_RTOL)
    bad = bad_high | bad_low
    masks["ohlc_relation"] = bad
    texts = {"high": "high must be >= open, close and low", "low": "low must be <= open and close"}
    for code, pos in t.by_symbol(np.flatnonzero(bad)):
        column = "high" if bad_high[pos[0]] else "low"
        other = "low" if column == "high" else "high"
        n_other = int((bad_low if column == "high" else bad_high)[pos].sum())
        message = f"OHLC relation broken: {texts[column]}"
        if n_other:
            message += f"; {n_other} of these row(s) break the {other} side ({texts[other]})"
        issues.append(Issue(
            "ohlc_relation", "error", t.name(code), column, int(pos.size), t.stamp(pos[0]),
            [t.example(p, _OHLC_COLUMNS) for p in pos[:MAX_EXAMPLES]], message,
        ))

    dup = pd.DataFrame({"c": t.codes, "t": t.ts}).duplicated(keep="first").to_numpy() & t.ts_valid
    masks["duplicate_timestamp"] = dup
    issues += _row_issues(t, "duplicate_timestamp", TIMESTAMP, dup,
                          "more than one bar for the same symbol and timestamp", list(OHLCV_COLUMNS))

    # previous bar of the same symbol in table order (NaT rows skipped)
    pos = np.flatnonzero(t.ts_valid)
    pos = pos[np.argsort(t.codes[pos], kind="stable")]
    same = t.codes[pos[1:]] == t.codes[pos[:-1]]
    back = same & (t.ts[pos[1:]] < t.ts[pos[:-1]])
    unsorted = np.zeros(t.n, dtype=bool)
    unsorted[pos[1:][back]] = True
    prev_of = dict(zip(pos[1:][back].tolist(), pos[:-1][back].tolist(), strict=True))
    for code, hits in t.by_symbol(np.flatnonzero(unsorted)):
        issues.append(Issue(
            "unsorted_timestamps", "error", t.name(code), TIMESTAMP, int(hits.size), t.stamp(hits[0]),
            [t.example(p, previous_timestamp=t.stamp(prev_of[int(p)])) for p in hits[:MAX_EXAMPLES]],
            "timestamps must increase within each symbol",
        ))
    return issues


def _group_median(values: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Median of ``values`` per code (NaN for codes without values)."""
    out = np.full(n_codes, np.nan)
    if values.size:
        med = pd.Series(values).groupby(codes).median()
        out[med.index.to_numpy()] = med.to_numpy()
    return out


def _warning_rules(t: _Table, outlier_mad: float) -> tuple[list[Issue], np.ndarray, _Gaps]:
    """gap, zero_volume and outlier_return on each symbol's bars in time order.

    Returns the issues, the inferred interval per symbol code (ns, 0 when unknown) and the intraday gaps.
    """
    n_codes = len(t.names)
    valid = np.flatnonzero(t.ts_valid)
    order = valid[np.lexsort((t.ts[valid], t.codes[valid]))]  # by symbol, then time; stable
    cs, tss = t.codes[order], t.ts[order]
    same = cs[1:] == cs[:-1]
    diff = tss[1:] - tss[:-1]
    nxt_code = cs[1:]

    step = same & (diff > 0)
    med = _group_median(diff[step].astype(float), nxt_code[step], n_codes)
    interval = np.where(np.isnan(med), 0, np.round(np.nan_to_num(med))).astype(np.int64)

    issues: list[Issue] = []
    # ---- gaps
    iv = interval[nxt_code]
    intraday = same & (iv > 0) & (iv < _DAY_NS)
    missing = np.zeros(diff.size, dtype=np.int64)
    missing[intraday] = np.maximum((diff[intraday] - 1) // iv[intraday], 0)
    daily_codes = np.flatnonzero(interval >= _DAY_NS)
    day_note = {}
    if daily_codes.size:
        local = t.ts_series.dt.tz_localize(None).array.as_unit("ns").asi8[order]
        days = np.floor_divide(local, _DAY_NS)
        weekend = ((days + 3) % 7) >= 5  # 1970-01-01 was a Thursday (weekday 3)
        share = np.bincount(cs[weekend], minlength=n_codes) / np.maximum(np.bincount(cs, minlength=n_codes), 1)
        dates = days.astype("datetime64[D]")
        for every_day in (False, True):
            codes_here = daily_codes[(share[daily_codes] >= WEEKEND_SHARE) == every_day]
            if codes_here.size == 0:
                continue
            mask = same & np.isin(nxt_code, codes_here)
            bd = np.zeros(diff.size, dtype=np.int64)
            weekmask = "1111111" if every_day else "1111100"
            bd[mask] = np.busday_count(dates[:-1][mask], dates[1:][mask], weekmask=weekmask)
            unit_med = _group_median(bd[mask & (bd > 0)].astype(float), nxt_code[mask & (bd > 0)], n_codes)
            unit = np.where(np.isnan(unit_med), 0, np.round(np.nan_to_num(unit_med))).astype(np.int64)[nxt_code]
            ok = mask & (bd > 0) & (unit > 0)
            missing[ok] = np.maximum((bd[ok] - 1) // unit[ok], 0)
            for code in codes_here.tolist():
                day_note[code] = "calendar days" if every_day else "weekdays; holidays show as 1-bar gaps"
    gap_at = np.flatnonzero(missing > 0)  # index into diff: gap between order[i] and order[i + 1]
    if gap_at.size:
        gcodes = nxt_code[gap_at]
        splits = np.flatnonzero(np.diff(gcodes)) + 1
        for idx in np.split(gap_at, splits):
            code = int(nxt_code[idx[0]])
            after, before = order[idx + 1], order[idx]
            n_missing = int(missing[idx].sum())
            unit_text = _fmt_interval(int(interval[code]))
            note = f" (counted in {day_note[code]})" if code in day_note else ""
            issues.append(Issue(
                "gap", "warning", t.name(code), TIMESTAMP, int(idx.size), t.stamp(after[0]),
                [t.example(a, previous_timestamp=t.stamp(b), missing_bars=int(m))
                 for a, b, m in zip(after[:MAX_EXAMPLES], before[:MAX_EXAMPLES], missing[idx][:MAX_EXAMPLES],
                                    strict=True)],
                f"{idx.size} gap(s) with {n_missing} missing bar(s) against the inferred {unit_text} interval{note}",
                missing_bars=n_missing,
            ))
    gaps = _Gaps(order[:-1][intraday & (missing > 0)], tss[:-1][intraday & (missing > 0)],
                 missing[intraday & (missing > 0)], iv[intraday & (missing > 0)])

    # ---- zero volume runs
    zero = t.values["volume"][order] == 0
    if zero.any():
        start = zero.copy()
        start[1:] &= ~(zero[:-1] & same)
        run_id = np.cumsum(start) - 1
        run_len = np.bincount(run_id[zero])
        run_start = np.flatnonzero(start)
        run_end = run_start + run_len - 1
        run_code = cs[run_start]
        splits = np.flatnonzero(np.diff(run_code)) + 1
        for runs in np.split(np.arange(run_start.size), splits):
            code = int(run_code[runs[0]])
            n_bars = int(run_len[runs].sum())
            issues.append(Issue(
                "zero_volume", "warning", t.name(code), "volume", n_bars, t.stamp(order[run_start[runs[0]]]),
                [t.example(order[run_start[r]], end_timestamp=t.stamp(order[run_end[r]]), bars=int(run_len[r]))
                 for r in runs[:MAX_EXAMPLES]],
                f"{n_bars} zero-volume bar(s) in {runs.size} run(s) of consecutive bars "
                f"(longest {run_len[runs].max()})",
                runs=int(runs.size),
            ))

    # ---- outlier 1-bar log returns
    close = t.values["close"][order]
    with np.errstate(invalid="ignore", divide="ignore"):
        logc = np.where(np.isfinite(close) & (close > 0), np.log(np.where(close > 0, close, 1.0)), np.nan)
    ret = np.where(same, logc[1:] - logc[:-1], np.nan)
    has = np.isfinite(ret)
    centre = _group_median(ret[has], nxt_code[has], n_codes)
    dev = np.abs(ret - centre[nxt_code])
    mad = _group_median(dev[has], nxt_code[has], n_codes)
    mean_ad = np.full(n_codes, np.nan)
    if has.any():
        mean_series = pd.Series(dev[has]).groupby(nxt_code[has]).mean()
        mean_ad[mean_series.index.to_numpy()] = mean_series.to_numpy()
    scale = np.where(mad > 0, MAD_SCALE * mad, MEAN_AD_SCALE * mean_ad)
    s = scale[nxt_code]
    with np.errstate(invalid="ignore"):
        flag = has & (s > 0) & (dev > outlier_mad * s)
    flag_at = np.flatnonzero(flag)
    if flag_at.size:
        splits = np.flatnonzero(np.diff(nxt_code[flag_at])) + 1
        for idx in np.split(flag_at, splits):
            code = int(nxt_code[idx[0]])
            rows = order[idx + 1]
            issues.append(Issue(
                "outlier_return", "warning", t.name(code), "close", int(idx.size), t.stamp(rows[0]),
                [t.example(r, ["close"], previous_close=close[i], log_return=ret[i])
                 for r, i in zip(rows[:MAX_EXAMPLES], idx[:MAX_EXAMPLES], strict=True)],
                f"{idx.size} 1-bar log return(s) further than {outlier_mad:g} x {MAD_SCALE} x MAD "
                f"({outlier_mad * scale[code]:.3g}) from the median ({centre[code]:.3g})",
            ))
    return issues, interval, gaps


def _analyse(bars: pd.DataFrame, outlier_mad: float = 12.0, include_warnings: bool = True) -> _Analysis:
    """Run the rules on ``bars`` (never modifying it); the report plus what the policies need."""
    if not isinstance(bars, pd.DataFrame):
        raise TypeError(f"bars must be a pandas DataFrame, got {type(bars).__name__}")
    if not outlier_mad > 0:
        raise ValueError(f"outlier_mad must be > 0, got {outlier_mad}")
    structural = _structural(bars)
    if structural:
        symbols: dict[str, dict[str, Any]] = {}
        if SYMBOL in bars.columns and len(bars):
            counts = bars[SYMBOL].astype(str).value_counts(sort=False)
            symbols = {str(s): {"rows": int(n), "interval_s": None} for s, n in counts.items()}
        return _Analysis(ValidationReport(structural, len(bars), symbols))
    t = _Table(bars)
    masks: dict[str, np.ndarray] = {}
    issues = _row_rules(t, masks)
    interval = np.zeros(len(t.names), dtype=np.int64)
    gaps = None
    if include_warnings:
        warnings, interval, gaps = _warning_rules(t, outlier_mad)
        issues += warnings
    rows = np.bincount(t.codes, minlength=len(t.names))
    symbols = {name: {"rows": int(rows[k]), "interval_s": float(interval[k]) / 1e9 if interval[k] > 0 else None}
               for k, name in enumerate(t.names)}
    return _Analysis(ValidationReport(issues, t.n, symbols), masks, t, gaps)


# --------------------------------------------------------------------------------------------------
# public entry points


def validate(bars: pd.DataFrame, *, outlier_mad: float = 12.0, include_warnings: bool = True) -> ValidationReport:
    """Check every rule of :data:`RULES` for every symbol of ``bars`` and report all findings.

    Vectorised over rows (numpy/pandas); the table is never modified, reordered or copied back.

    Args:
        bars: table with the columns in :data:`~raytrade.data.schema.BAR_COLUMNS` (extra columns ignored);
            prices in quote currency, volume in base units, timestamps tz-aware.
        outlier_mad: ``outlier_return`` threshold in scaled MADs (1.4826 x MAD ~ one standard deviation);
            must be > 0.
        include_warnings: False skips the warning rules (what :func:`~raytrade.data.validation.validate_bars`
            uses; ``symbols`` then has no intervals).

    Returns:
        The report; :attr:`ValidationReport.ok` is False when an error rule is broken.

    Raises:
        TypeError: ``bars`` is not a DataFrame.
        ValueError: ``outlier_mad`` is not > 0.
    """
    return _analyse(bars, outlier_mad, include_warnings).report


def validate_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Check OHLCV bars against every error rule and return them unchanged.

    Rules, checked in this order (the first broken one is raised):

    ``missing_columns``, ``timestamp_type`` (not tz-aware datetime), ``dtype`` (an OHLCV column is not
    numeric), ``empty``, ``nan`` (NaN/inf in an OHLCV column, NaT in ``timestamp``), ``non_positive_price``,
    ``negative_volume``, ``ohlc_relation`` (``high < max(open, close, low)`` names ``high``;
    ``low > min(open, close)`` names ``low``), ``duplicate_timestamp`` and ``unsorted_timestamps``
    (both within a symbol). This is
    ``validate(bars, include_warnings=False).raise_first()``. Warnings (gaps, zero volume, outlier
    returns) never fail here; use :func:`raytrade.data.validation.validate` to see them.

    Args:
        bars: table with the columns in :data:`BAR_COLUMNS`.

    Returns:
        The same DataFrame object (not a copy), so callers can chain.

    Raises:
        DataValidationError: naming rule, column, symbol, first bad timestamp (of the first offending
            row in table order) and the number of rows breaking that rule over all symbols.
    """
    validate(bars, include_warnings=False).raise_first()
    return bars


def validate_next_bar(symbol: str, previous: dict[str, Any] | None, bar: dict[str, Any]) -> None:
    """Check one new bar of ``symbol`` against the error rules, given the ``previous`` bar held (both
    ``{timestamp: tz-aware pd.Timestamp, open, high, low, close, volume: float}``): what :func:`validate_bars`
    says of the two bars as a table, in O(1). A streaming server calls it per bar. With ``previous`` None only
    the bar's own values are checked (not its order).

    A clean bar is accepted by scalar checks of the rules (``nan``, ``non_positive_price``, ``negative_volume``,
    ``ohlc_relation``, ``duplicate_timestamp``, ``unsorted_timestamps``); a bar that fails one is passed to
    :func:`validate_bars` with the previous bar, so the error raised is that function's, word for word.

    Raises:
        DataValidationError: as :func:`validate_bars` on ``[previous, bar]``.
    """
    o, h, lo, c, v = (bar[k] for k in OHLCV_COLUMNS)
    finite = all(math.isfinite(x) for x in (o, h, lo, c, v))
    if (finite and min(o, h, lo, c) > 0 and v >= 0 and not h < max(o, c, lo) * (1 - OHLC_RTOL)
            and not lo > min(o, c) * (1 + OHLC_RTOL) and (previous is None or bar[TIMESTAMP] > previous[TIMESTAMP])):
        return
    rows = [bar] if previous is None else [previous, bar]
    pair = pd.DataFrame({TIMESTAMP: pd.DatetimeIndex([r[TIMESTAMP] for r in rows]), SYMBOL: [symbol] * len(rows),
                         **{k: np.array([r[k] for r in rows], dtype=np.float64) for k in OHLCV_COLUMNS}})
    validate_bars(pair)
    raise AssertionError(f"validate_next_bar: the fast check refused a bar validate_bars accepts: {bar}")


def _count_dropped(t: _Table, rows: np.ndarray) -> dict[str, int]:
    counts = np.bincount(t.codes[rows], minlength=len(t.names))
    return {t.name(k): int(n) for k, n in enumerate(counts) if n}


def _fill_gaps(bars: pd.DataFrame, gaps: _Gaps) -> tuple[pd.DataFrame, dict[str, int]]:
    """Insert the bars missing from intraday gaps; returns the new table and bars inserted per symbol."""
    base = bars.reset_index(drop=True)
    flags = base[REPAIRED].fillna(False).astype(bool) if REPAIRED in base.columns else False
    base[REPAIRED] = flags
    if gaps.missing.size == 0:
        return base, {}
    which = np.repeat(np.arange(gaps.missing.size), gaps.missing)
    j = np.arange(which.size) - np.repeat(np.cumsum(gaps.missing) - gaps.missing, gaps.missing) + 1
    new_ns = gaps.prev_ts[which] + j * gaps.interval[which]
    prev = gaps.prev_pos[which]
    ins = base.iloc[prev].reset_index(drop=True)
    tz = base[TIMESTAMP].dt.tz
    unit = base[TIMESTAMP].dt.unit
    stamps = pd.DatetimeIndex(new_ns.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(tz).as_unit(unit)
    ins[TIMESTAMP] = stamps
    prev_close = base["close"].to_numpy()[prev]
    for col in PRICE_COLUMNS:
        ins[col] = prev_close
    ins["volume"] = 0
    none = np.zeros(len(ins), dtype=bool)
    for col in ins.columns:
        if col not in BAR_COLUMNS and col != REPAIRED:
            ins[col] = ins[col].where(none)  # extra columns are unknown on inserted bars
    ins[REPAIRED] = True
    out = pd.concat([base, ins], ignore_index=True)
    base_ns = base[TIMESTAMP].array.as_unit("ns").asi8
    if np.all(base_ns[1:] >= base_ns[:-1]):  # one timeline (e.g. symbols interleaved by time): merge by time
        keys = (np.concatenate([np.zeros(len(base), dtype=np.int64), np.ones(which.size, dtype=np.int64)]),
                np.concatenate([base_ns, new_ns]))
    else:  # blocks per symbol: each inserted bar right after the bar before its gap
        keys = (np.concatenate([np.zeros(len(base), dtype=np.int64), j]), np.concatenate([np.arange(len(base)), prev]))
    out = out.iloc[np.lexsort(keys)].reset_index(drop=True)
    symbols = base[SYMBOL].astype(str).to_numpy()[gaps.prev_pos]
    inserted = pd.Series(gaps.missing).groupby(symbols, sort=False).sum()
    return out, {str(s): int(n) for s, n in inserted.items()}


def apply_policy(
    bars: pd.DataFrame, policy: Policy = "fail", *, outlier_mad: float = 12.0
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate ``bars`` and act on the errors found.

    Policies:

    - ``fail``: raise the first error (warnings never raise); otherwise return ``bars`` itself (same
      object, nothing reordered, filled or dropped) and its report.
    - ``drop``: return a copy (original index labels kept) without the rows breaking ``nan``,
      ``non_positive_price``, ``negative_volume`` or ``ohlc_relation``, then without duplicate bars
      (the first of each duplicate group left is kept). Structural errors and ``unsorted_timestamps``
      still raise: dropping cannot fix them.
    - ``repair``: ``drop``, then insert the bars missing from intraday gaps (interval < 1 day): at the
      symbol's inferred interval after the bar before the gap, with open = high = low = close = that
      bar's close, volume = 0 and extra columns missing (NaN). Adds a boolean column ``repaired``
      (True on inserted bars; an existing one is kept for the original rows). Daily and longer gaps are
      reported, not filled. The result has a fresh RangeIndex and keeps time order: in a table on one
      timeline (timestamps non-decreasing down the table, e.g. symbols interleaved) inserted bars are
      merged in by timestamp, after the original bars of the same timestamp; otherwise (blocks per
      symbol) they directly follow the bar before their gap.

    Args:
        bars: the bar table (see :func:`validate`); never modified.
        policy: ``"fail"``, ``"drop"`` or ``"repair"``.
        outlier_mad: see :func:`validate`.

    Returns:
        ``(bars, report)``: the (possibly cleaned) table, which passes
        :func:`~raytrade.data.validation.validate_bars`, and the report *of the input* with ``policy`` set,
        ``dropped`` (``{rule: {symbol: rows}}``), ``inserted`` (``{symbol: bars}``) and the ``action`` of
        each issue acted on (``"dropped"``, ``"filled"``). Its ``ok`` still describes the input.

    Raises:
        DataValidationError: ``fail`` and the bars break an error rule; ``drop``/``repair`` and a
            structural rule is broken, the timestamps are unsorted after dropping, or no row is left.
        ValueError: unknown policy or ``outlier_mad`` not > 0.
    """
    if policy not in ("fail", "drop", "repair"):
        raise ValueError(f"policy must be 'fail', 'drop' or 'repair', got {policy!r}")
    first = _analyse(bars, outlier_mad)
    report = first.report
    report.policy = policy
    if policy == "fail" or first.table is None:  # table is None: a structural error
        report.raise_first()
        return bars, report

    t = first.table
    keep = np.ones(t.n, dtype=bool)
    for rule in ROW_RULES[:-1]:
        rows = np.flatnonzero(first.masks[rule] & keep)
        if rows.size:
            report.dropped[rule] = _count_dropped(t, rows)
            keep[rows] = False
    kept = np.flatnonzero(keep)
    dup = pd.DataFrame({"c": t.codes[kept], "t": t.ts[kept]}).duplicated(keep="first").to_numpy()
    if dup.any():
        report.dropped["duplicate_timestamp"] = _count_dropped(t, kept[dup])
        keep[kept[dup]] = False
    for issue in report.issues:
        if issue.rule in ROW_RULES:
            issue.action = "dropped"
    out = bars.iloc[np.flatnonzero(keep)].copy()

    second = _analyse(out, outlier_mad, include_warnings=policy == "repair")
    second.report.raise_first()  # unsorted timestamps (or nothing left) cannot be fixed by dropping
    if policy == "drop":
        return out, report

    assert second.gaps is not None
    out, report.inserted = _fill_gaps(out, second.gaps)
    for issue in report.issues:
        if issue.rule == "gap" and report.inserted.get(issue.symbol or "", 0):
            issue.action = "filled"
    return out, report


__all__ = [
    "MAX_EXAMPLES",
    "OHLC_RTOL",
    "REPAIRED",
    "ROW_RULES",
    "RULES",
    "STRUCTURAL_RULES",
    "Issue",
    "Policy",
    "Severity",
    "ValidationReport",
    "apply_policy",
    "validate",
    "validate_bars",
    "validate_next_bar",
]
