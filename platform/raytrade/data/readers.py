"""Readers for OHLCV bars: Parquet and CSV (including Yahoo Finance's layout).

Every reader returns the canonical bar schema of :mod:`raytrade.data.schema` without validating;
call :func:`raytrade.data.validation.validate_bars` (or :func:`load_bars`) next.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raytrade.data.schema import BAR_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.data.validation import validate_bars
from raytrade.errors import DataValidationError

#: column of the Yahoo Finance CSV layout -> canonical name. ``Adj Close`` is kept aside: the
#: OHLC relation only holds for the unadjusted prices, so ``close`` is the raw ``Close``.
YAHOO_COLUMNS = {"Date": TIMESTAMP, "Open": "open", "High": "high", "Low": "low", "Close": "close",
                 "Adj Close": "adj_close", "Volume": "volume"}
_TIMESTAMP_ALIASES = ("timestamp", "date", "datetime", "time")


def _normalise(frame: pd.DataFrame, symbol: str | None, source: Path) -> pd.DataFrame:
    if set(YAHOO_COLUMNS).issubset(frame.columns):
        frame = frame.rename(columns=YAHOO_COLUMNS)
    else:
        frame = frame.rename(columns={c: c.strip().lower() for c in frame.columns})
        if TIMESTAMP not in frame.columns:
            alias = next((a for a in _TIMESTAMP_ALIASES if a in frame.columns), None)
            if alias is not None:
                frame = frame.rename(columns={alias: TIMESTAMP})
    if SYMBOL not in frame.columns:
        frame.insert(1 if TIMESTAMP in frame.columns else 0, SYMBOL, symbol or source.stem)
    elif symbol is not None:
        frame = frame[frame[SYMBOL] == symbol].reset_index(drop=True)
        if frame.empty:
            raise DataValidationError("unknown_symbol", f"symbol {symbol!r} not found in {source}",
                                      column=SYMBOL, symbol=symbol)
    if TIMESTAMP in frame.columns and not isinstance(frame[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        raw = frame[TIMESTAMP]
        parsed = pd.to_datetime(raw, utc=True, errors="coerce")
        bad = parsed.isna() & raw.notna()
        if bad.any() or raw.isna().any():
            first = raw[bad | raw.isna()].iloc[0]
            raise DataValidationError("timestamp_parse", f"cannot parse timestamp {first!r} in {source}",
                                      column=TIMESTAMP, count=int((bad | raw.isna()).sum()))
        frame[TIMESTAMP] = parsed
    extra = [c for c in frame.columns if c not in BAR_COLUMNS]
    ordered = [c for c in BAR_COLUMNS if c in frame.columns]
    frame = frame[ordered + extra]
    for col in ("open", "high", "low", "close", "volume"):
        if col in frame.columns and frame[col].dtype == object:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")  # 'null' -> NaN, caught by validation
    return frame


def read_bars(path: str | Path, symbol: str | None = None) -> pd.DataFrame:
    """Read OHLCV bars from a ``.parquet`` or ``.csv`` file into the canonical schema.

    Args:
        path: Parquet (canonical columns) or CSV (canonical lower-case columns, or the Yahoo
            layout ``Date,Open,High,Low,Close,Adj Close,Volume``).
        symbol: for files without a ``symbol`` column, the symbol to assign (default: file stem);
            for multi-symbol files, keep only this symbol.

    Returns:
        DataFrame with :data:`~raytrade.data.schema.BAR_COLUMNS` first (timestamps UTC); rows in file order.

    Raises:
        DataValidationError: the file is missing, of an unknown format, or its timestamps don't parse.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError("file_not_found", f"no such data file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise DataValidationError(
            "file_format", f"unsupported data file type {suffix!r} ({path}); use .parquet or .csv"
        )
    return _normalise(frame, symbol, path)


def load_bars(path: str | Path, symbol: str | None = None, max_bars: int | None = None) -> pd.DataFrame:
    """Read and validate bars; optionally keep only the last ``max_bars`` bars of each symbol.

    Raises:
        DataValidationError: see :func:`read_bars` and :func:`~raytrade.data.validation.validate_bars`.
    """
    bars = validate_bars(read_bars(path, symbol))
    return bars if max_bars is None else keep_last_bars(bars, max_bars)


def keep_last_bars(bars: pd.DataFrame, n: int) -> pd.DataFrame:
    """The last ``n`` bars of each symbol (row order kept, index reset)."""
    return bars.groupby(SYMBOL, sort=False, group_keys=False).tail(n).reset_index(drop=True)
