"""Raw OHLCV bars only: the bar schema, readers (CSV/Parquet, Yahoo layout), exchange download (ccxt), the
partitioned ingest store, and validation (the per-symbol report, ``validate_bars`` and the drop/repair
policies). Imports nothing of raytrade above it (features, datasets and models build on it)."""

from raytrade.data.readers import load_bars, read_bars
from raytrade.data.schema import BAR_COLUMNS
from raytrade.data.validation import validate_bars

__all__ = ["BAR_COLUMNS", "load_bars", "read_bars", "validate_bars"]
