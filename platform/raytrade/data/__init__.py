"""OHLCV schema and validation, readers, labels, chronological splits, windows and the Ray Data
preprocessing pipeline."""

from raytrade.data.readers import load_bars, read_bars
from raytrade.data.schema import BAR_COLUMNS, validate_bars

__all__ = ["BAR_COLUMNS", "load_bars", "read_bars", "validate_bars"]
