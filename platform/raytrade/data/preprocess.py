"""Ray Data preprocessing: per-symbol causal features + forward-return labels, in parallel.

``bars -> groupby(symbol).map_groups(features + labels) -> one frame`` sorted by symbol (in order of
first appearance) then timestamp. Warm-up rows, whose features are undefined, are the only rows
left out, and :class:`PreprocessResult` says how many.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from raytrade.config import FeatureConfig, LabelConfig
from raytrade.data.labels import add_labels, label_columns
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.features.technical import compute_features, feature_columns


@dataclass(frozen=True)
class PreprocessResult:
    """Output of :func:`preprocess`.

    Attributes:
        frame: ``timestamp``, ``symbol``, OHLCV, unscaled feature columns and ``label_*`` columns.
            Rows of the last ``horizon`` bars of each symbol have NaN labels (their future is unknown).
        feature_columns: names of the model input columns, in order.
        warmup_dropped: rows left out per symbol because a feature was still undefined.
    """

    frame: pd.DataFrame
    feature_columns: list[str]
    warmup_dropped: dict[str, int]


def symbol_features(bars: pd.DataFrame, features: FeatureConfig, labels: LabelConfig) -> pd.DataFrame:
    """Features + labels for ONE symbol's bars; rows with undefined features are dropped.

    The bars are ordered by timestamp first (validated bars are sorted already; a group handed over
    by a Ray shuffle need not be).
    """
    bars = bars.sort_values(TIMESTAMP, kind="stable")
    frame = add_labels(compute_features(bars, features), labels)
    complete = frame[feature_columns(features)].notna().all(axis=1).to_numpy()
    frame = frame[complete].reset_index(drop=True)
    frame["warmup_dropped"] = int((~complete).sum())
    return frame


def preprocess(bars: pd.DataFrame, features: FeatureConfig, labels: LabelConfig) -> PreprocessResult:
    """Compute features and labels per symbol with Ray Data (``groupby("symbol").map_groups``).

    Args:
        bars: validated bars, one or many symbols.

    Returns:
        :class:`PreprocessResult`. Uses the running Ray instance (``ray.init()`` if none).
    """
    import ray  # local import: keep ``import raytrade.data`` free of Ray start-up cost

    order = {s: i for i, s in enumerate(pd.unique(bars[SYMBOL]))}
    ds = ray.data.from_pandas(bars)
    fn = partial(symbol_features, features=features, labels=labels)
    n_symbols = len(order)
    grouped = ds.groupby(SYMBOL, num_partitions=max(1, min(n_symbols, 64)))
    frame = grouped.map_groups(fn, batch_format="pandas").to_pandas()
    frame = frame.sort_values([SYMBOL, TIMESTAMP], key=lambda s: s.map(order) if s.name == SYMBOL else s,
                              kind="stable").reset_index(drop=True)
    dropped = frame.groupby(SYMBOL, sort=False)["warmup_dropped"].first().astype(int).to_dict()
    frame = frame.drop(columns="warmup_dropped")
    for sym in order:  # a symbol with fewer bars than the warm-up yields no rows at all
        dropped.setdefault(sym, int((bars[SYMBOL] == sym).sum()))
    # Arrow round-trips may hand back pyarrow-backed dtypes: restore plain numpy ones
    for col in [*feature_columns(features), "open", "high", "low", "close", "volume", *label_columns(frame)]:
        frame[col] = frame[col].astype(np.float64)
    frame[SYMBOL] = frame[SYMBOL].astype(bars[SYMBOL].dtype)
    frame[TIMESTAMP] = frame[TIMESTAMP].astype(bars[TIMESTAMP].dtype)
    return PreprocessResult(frame=frame, feature_columns=feature_columns(features), warmup_dropped=dropped)
