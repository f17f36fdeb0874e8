"""The OHLCV bar schema and its validation rules.

A bar table has one row per (symbol, bar): ``timestamp`` (tz-aware UTC, bar open), ``symbol`` (str),
``open``, ``high``, ``low``, ``close`` (float, quote currency) and ``volume`` (float, base units).
Rows are sorted by timestamp within each symbol. Validation never changes, fills, drops or reorders
a row: :func:`validate_bars` either returns the table unchanged or raises :class:`DataValidationError`
naming the rule, column, symbol and first offending timestamp. The full per-symbol report (all
errors plus gap/zero-volume/outlier warnings) and the drop/repair policies are in
:mod:`raytrade.data.validation`.
"""

from __future__ import annotations

import pandas as pd

TIMESTAMP = "timestamp"
SYMBOL = "symbol"
PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV_COLUMNS = (*PRICE_COLUMNS, "volume")
BAR_COLUMNS = (TIMESTAMP, SYMBOL, *OHLCV_COLUMNS)


def validate_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Check OHLCV bars against every error rule and return them unchanged.

    Rules, checked in this order (the first broken one is raised):

    ``missing_columns``, ``timestamp_type`` (not tz-aware datetime), ``dtype`` (an OHLCV column is not
    numeric), ``empty``, ``nan`` (NaN/inf in an OHLCV column, NaT in ``timestamp``), ``non_positive_price``,
    ``negative_volume``, ``ohlc_relation`` (``high < max(open, close, low)`` names ``high``;
    ``low > min(open, close)`` names ``low``), ``duplicate_timestamp`` and ``unsorted_timestamps``
    (both within a symbol). The rules live in :mod:`raytrade.data.validation`; this is
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
    from raytrade.data.validation import validate  # deferred: validation imports this module's constants

    validate(bars, include_warnings=False).raise_first()
    return bars
