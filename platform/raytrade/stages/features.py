"""The features stage on its own: bars -> validated -> causal features + labels per symbol (Ray Data) -> Parquet.

Used by ``raytrade features`` and ``jobs/features.py``. Unlike the pipeline it keeps every symbol of the
source (one Ray Data group each): the output is the training table of a multi-symbol universe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.dataset.preprocess import PreprocessResult


def feature_table(result: PreprocessResult) -> pd.DataFrame:
    """``timestamp``, ``symbol``, the unscaled feature columns and the ``label_*`` columns, in that order."""
    labels = [c for c in result.frame if c.startswith("label_")]
    return result.frame[["timestamp", "symbol", *result.feature_columns, *labels]]


def write_features(cfg: PipelineConfig, source: str | Path, output_dir: str | Path, symbol: str | None = None,
                   redis_url: str | None = None) -> dict[str, Any]:
    """Read and validate (``data.policy``, ``data.max_bars`` per symbol) the bars of ``source``, compute the
    features and labels of ``cfg.features``/``cfg.labels`` per symbol with Ray Data and write
    ``<output_dir>/features.parquet`` (see :func:`feature_table`). Every non-label column at bar t uses bars
    at or before t only; the last ``labels.horizon`` bars of each symbol have NaN labels.

    With ``redis_url`` the latest window of every symbol (``model.lookback`` rows) also goes to the online store.

    Returns:
        ``{"path", "rows", "columns", "symbols", "warmup_rows_dropped", "store"}``.

    Raises:
        DataValidationError: a rule is broken under policy ``fail``; InsufficientDataError: too few bars.
    """
    from raytrade.data.ingest import read_many
    from raytrade.data.readers import keep_last_bars
    from raytrade.data.validation import apply_policy
    from raytrade.dataset.preprocess import preprocess
    from raytrade.runtime import ray_session

    bars, _ = apply_policy(read_many(source, symbol or cfg.data.symbol), cfg.data.policy)
    if cfg.data.max_bars is not None:
        bars = keep_last_bars(bars, cfg.data.max_bars)
    with ray_session(cfg):
        result = preprocess(bars, cfg.features, cfg.labels)
    stored = None
    if redis_url:
        from raytrade.store.publish import publish_latest_windows

        stored = publish_latest_windows(result, bars, cfg.features, cfg.model.lookback,
                                        cfg.store.model_copy(update={"url": redis_url}))
    table = feature_table(result)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "features.parquet"
    table.to_parquet(path, index=False)
    return {"path": str(path), "rows": len(table), "columns": len(table.columns),
            "symbols": sorted(map(str, table["symbol"].unique())),
            "warmup_rows_dropped": sum(result.warmup_dropped.values()), "store": stored}
