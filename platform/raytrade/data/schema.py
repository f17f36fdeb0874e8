"""The OHLCV bar schema and its validation rules.

A bar table has one row per (symbol, bar): ``timestamp`` (tz-aware UTC, bar open), ``symbol`` (str),
``open``, ``high``, ``low``, ``close`` (float, quote currency) and ``volume`` (float, base units).
Rows are sorted by timestamp within each symbol. Validation never changes, fills, drops or reorders
a row: it either returns the table unchanged or raises :class:`DataValidationError` naming the
rule, column, symbol and first offending timestamp.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raytrade.errors import DataValidationError

TIMESTAMP = "timestamp"
SYMBOL = "symbol"
PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV_COLUMNS = (*PRICE_COLUMNS, "volume")
BAR_COLUMNS = (TIMESTAMP, SYMBOL, *OHLCV_COLUMNS)

#: relative tolerance on the OHLC relation, for float round-off in stored prices only
_OHLC_RTOL = 1e-9


def _first(bars: pd.DataFrame, mask: np.ndarray | pd.Series) -> tuple[str | None, object, int]:
    """Symbol, timestamp and count of the first row (in table order) where ``mask`` is True."""
    mask = np.asarray(mask, dtype=bool)
    idx = int(np.flatnonzero(mask)[0])
    row = bars.iloc[idx]
    symbol = str(row[SYMBOL]) if SYMBOL in bars.columns else None
    return symbol, row[TIMESTAMP] if TIMESTAMP in bars.columns else None, int(mask.sum())


def validate_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Check OHLCV bars against every rule and return them unchanged.

    Rules, checked in this order (the first broken one is raised):

    ``missing_columns``, ``timestamp_type`` (not tz-aware datetime), ``empty``, ``nan`` (NaN/inf in
    an OHLCV column), ``non_positive_price``, ``negative_volume``, ``ohlc_relation``
    (``high < max(open, close, low)`` names ``high``; ``low > min(open, close)`` names ``low``),
    ``duplicate_timestamp`` and ``unsorted_timestamps`` (both within a symbol).

    Args:
        bars: table with the columns in :data:`BAR_COLUMNS`.

    Returns:
        The same DataFrame object (not a copy), so callers can chain.

    Raises:
        DataValidationError: naming rule, column, symbol, first bad timestamp and row count.
    """
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise DataValidationError(
            "missing_columns",
            f"bars lack required column(s) {missing}; expected {list(BAR_COLUMNS)}",
            column=missing[0],
        )
    ts = bars[TIMESTAMP]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise DataValidationError(
            "timestamp_type",
            f"timestamp must be a timezone-aware datetime column, got dtype {ts.dtype}",
            column=TIMESTAMP,
        )
    if len(bars) == 0:
        raise DataValidationError("empty", "bar table has no rows")

    for col in OHLCV_COLUMNS:
        values = pd.to_numeric(bars[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            symbol, first_ts, n = _first(bars, bad)
            raise DataValidationError(
                "nan", f"{col} has missing or non-numeric values", column=col, symbol=symbol,
                timestamp=first_ts, count=n,
            )
    for col in PRICE_COLUMNS:
        bad = bars[col].to_numpy(dtype=float) <= 0
        if bad.any():
            symbol, first_ts, n = _first(bars, bad)
            raise DataValidationError(
                "non_positive_price", f"{col} must be > 0", column=col, symbol=symbol,
                timestamp=first_ts, count=n,
            )
    bad = bars["volume"].to_numpy(dtype=float) < 0
    if bad.any():
        symbol, first_ts, n = _first(bars, bad)
        raise DataValidationError(
            "negative_volume", "volume must be >= 0", column="volume", symbol=symbol,
            timestamp=first_ts, count=n,
        )

    o, h, lo, c = (bars[col].to_numpy(dtype=float) for col in PRICE_COLUMNS)
    top = np.maximum.reduce([o, c, lo])
    bottom = np.minimum(o, c)
    bad_high = h < top * (1 - _OHLC_RTOL)
    bad_low = lo > bottom * (1 + _OHLC_RTOL)
    if bad_high.any() or bad_low.any():
        first_high = np.flatnonzero(bad_high)[0] if bad_high.any() else len(bars)
        first_low = np.flatnonzero(bad_low)[0] if bad_low.any() else len(bars)
        column, mask, rule_text = (
            ("high", bad_high, "high must be >= open, close and low")
            if first_high <= first_low
            else ("low", bad_low, "low must be <= open and close")
        )
        symbol, first_ts, n = _first(bars, mask)
        raise DataValidationError(
            "ohlc_relation", f"OHLC relation broken: {rule_text}", column=column, symbol=symbol,
            timestamp=first_ts, count=int((bad_high | bad_low).sum()),
        )

    dup = bars.duplicated([SYMBOL, TIMESTAMP], keep="first").to_numpy()
    if dup.any():
        symbol, first_ts, n = _first(bars, dup)
        raise DataValidationError(
            "duplicate_timestamp", "more than one bar for the same symbol and timestamp",
            column=TIMESTAMP, symbol=symbol, timestamp=first_ts, count=n,
        )
    step = bars.groupby(SYMBOL, sort=False)[TIMESTAMP].diff()
    unsorted = (step < pd.Timedelta(0)).to_numpy()
    if unsorted.any():
        symbol, first_ts, n = _first(bars, unsorted)
        raise DataValidationError(
            "unsorted_timestamps", "timestamps must increase within each symbol",
            column=TIMESTAMP, symbol=symbol, timestamp=first_ts, count=n,
        )
    return bars
