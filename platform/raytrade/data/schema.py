"""The OHLCV bar schema: column names and their meaning.

A bar table has one row per (symbol, bar): ``timestamp`` (tz-aware UTC, bar open), ``symbol`` (str),
``open``, ``high``, ``low``, ``close`` (float, quote currency) and ``volume`` (float, base units).
Rows are sorted by timestamp within each symbol. The rules that check a table against this schema,
:func:`raytrade.data.validation.validate_bars` among them, live in :mod:`raytrade.data.validation`.
"""

from __future__ import annotations

TIMESTAMP = "timestamp"
SYMBOL = "symbol"
PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV_COLUMNS = (*PRICE_COLUMNS, "volume")
BAR_COLUMNS = (TIMESTAMP, SYMBOL, *OHLCV_COLUMNS)
