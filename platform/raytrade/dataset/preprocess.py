"""Ray Data preprocessing: per-symbol causal features + forward-return labels in parallel, then the
cross-sectional step.

Step 1: each symbol's bars form one block (``ray.data.from_pandas(list_of_frames)``) and
``map_batches(batch_size=None)`` computes its features, labels and (when on) its cross-sectional inputs
in a task, so symbols run in parallel on every CPU of the cluster with no shuffle.
Step 2 (several symbols, or ``features.cross_sectional: true``): the ``xs_`` columns of
:mod:`raytrade.features.cross_sectional` over the rows step 1 kept, vectorised per timestamp in the driver
(ranks, z-scores, universe return) plus one TA-Lib pass per symbol (beta, correlation).

The output is one frame sorted by symbol (in order of first appearance) then timestamp. Rows whose
features are undefined (the warm-up, bars before the cross-asset reference symbol's first bar, or a
symbol's first ``beta_window - 1`` rows in the cross-section) are the only rows left out, and
:class:`PreprocessResult` says how many per symbol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from raytrade.config import FeatureConfig, LabelConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.dataset.labels import add_labels, label_columns
from raytrade.errors import ConfigError, InsufficientDataError
from raytrade.features.cross_sectional import (
    INPUT_COLUMNS,
    PREV_TS,
    cross_sectional_columns,
    cross_sectional_enabled,
    cross_sectional_step,
    symbol_inputs,
)
from raytrade.features.technical import compute_features, feature_columns

_DROPPED = "_rows_dropped"


@dataclass(frozen=True)
class PreprocessResult:
    """Output of :func:`preprocess`.

    Attributes:
        frame: ``timestamp``, ``symbol``, OHLCV, unscaled feature columns (the ``xs_`` ones last) and
            ``label_*`` columns. Rows of the last ``horizon`` bars of each symbol have NaN labels (their
            future is unknown).
        feature_columns: names of the model input columns, in order.
        warmup_dropped: rows left out per symbol because a feature was still undefined.
        reference_symbol: the symbol cross-asset features are measured against (None if off).
        cross_sectional: whether the ``xs_`` columns are in ``feature_columns``.
    """

    frame: pd.DataFrame
    feature_columns: list[str]
    warmup_dropped: dict[str, int]
    reference_symbol: str | None = None
    cross_sectional: bool = False


def symbol_features(
    bars: pd.DataFrame, features: FeatureConfig, labels: LabelConfig, reference: pd.Series | None = None,
    cross_sectional: bool = False,
) -> pd.DataFrame:
    """Features + labels for ONE symbol's bars (oldest first); rows with undefined features are dropped.

    With ``cross_sectional`` the private ``_xs_*`` inputs of
    :func:`raytrade.features.cross_sectional.symbol_inputs` are added and must be defined too: the rows kept
    are the symbol's members of the cross-section. The returned frame carries the number of dropped rows in
    the ``_rows_dropped`` column.
    """
    frame = add_labels(compute_features(bars, features, reference=reference), labels)
    cols = feature_columns(features, cross_asset=reference is not None)
    if cross_sectional:
        frame = pd.concat([frame, symbol_inputs(bars, features)], axis=1)
        cols = [*cols, *(c for c in INPUT_COLUMNS if c != PREV_TS)]
    complete = frame[cols].notna().all(axis=1).to_numpy()
    frame = frame[complete].reset_index(drop=True)
    frame[_DROPPED] = int((~complete).sum())
    return frame


def _per_block(batch: pd.DataFrame, features: FeatureConfig, labels: LabelConfig,
               reference: pd.Series | None, cross_sectional: bool) -> pd.DataFrame:
    """One Ray Data block = one symbol's bars (grouped again here, so a merged block stays correct)."""
    return pd.concat([symbol_features(g.reset_index(drop=True), features, labels, reference, cross_sectional)
                      for _, g in batch.groupby(SYMBOL, sort=False)], ignore_index=True)


def reference_series(bars: pd.DataFrame, features: FeatureConfig) -> tuple[str | None, pd.Series | None]:
    """The cross-asset reference ``(symbol, close indexed by timestamp)``, or ``(None, None)`` when off.

    Raises:
        ConfigError: ``features.reference_symbol`` is not in the data.
    """
    symbols = list(pd.unique(bars[SYMBOL]))
    enabled = features.cross_asset if features.cross_asset is not None else len(symbols) > 1
    if not enabled:
        return None, None
    ref = features.reference_symbol or symbols[0]
    if ref not in symbols:
        raise ConfigError(f"features.reference_symbol: {ref!r} is not among the symbols {symbols[:10]}")
    rows = bars[bars[SYMBOL] == ref]
    return str(ref), pd.Series(rows["close"].to_numpy(dtype=np.float64), index=pd.DatetimeIndex(rows[TIMESTAMP]))


def preprocess(bars: pd.DataFrame, features: FeatureConfig, labels: LabelConfig) -> PreprocessResult:
    """Compute features and labels per symbol with Ray Data, one task per symbol.

    Args:
        bars: validated bars, one or many symbols, sorted by timestamp within each symbol.

    Returns:
        :class:`PreprocessResult`. Uses the running Ray instance (``ray.init()`` if none). With
        several symbols (or ``features.cross_sectional: true``; never with ``false``) the ``xs_`` columns of
        :mod:`raytrade.features.cross_sectional` are computed over the rows of step 1 and appended to
        ``feature_columns``; rows where one is undefined (a symbol's beta warm-up) are dropped and counted.

    Raises:
        ConfigError: unknown reference symbol. InsufficientDataError: no symbol has a complete row.
    """
    import ray  # local import: keep ``import raytrade.data`` free of Ray start-up cost
    from ray.data import DataContext

    ref_symbol, reference = reference_series(bars, features)
    groups = {s: g.reset_index(drop=True) for s, g in bars.groupby(SYMBOL, sort=False)}
    xs_on = cross_sectional_enabled(features, len(groups))
    # One map over in-memory blocks: no downstream operator can starve, so Ray Data's per-operator
    # resource reservation (which on a small cluster admits about one task at a time) is switched off
    # for this dataset only; the context is copied into the dataset when it is created.
    ctx = DataContext.get_current()
    reservation = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        ds = ray.data.from_pandas(list(groups.values()))
        out = ds.map_batches(_per_block, batch_size=None, batch_format="pandas",
                             fn_kwargs={"features": features, "labels": labels, "reference": reference,
                                        "cross_sectional": xs_on})
        # Arrow tables -> pandas in one conversion: numpy dtypes directly (to_pandas() would give
        # pyarrow-backed columns whose element-wise casts dominate the run time on large inputs)
        frame = pa.concat_tables(ray.get(out.to_arrow_refs())).to_pandas()
    finally:
        ctx.op_resource_reservation_enabled = reservation
    order = {s: i for i, s in enumerate(groups)}
    frame = frame.sort_values([SYMBOL, TIMESTAMP], key=lambda s: s.map(order) if s.name == SYMBOL else s,
                              kind="stable").reset_index(drop=True)
    dropped = {s: len(g) for s, g in groups.items()}  # a symbol with no complete row yields no output at all
    for sym, rows in frame.groupby(SYMBOL, sort=False):
        dropped[sym] = int(rows[_DROPPED].iloc[0])
        if len(rows) + dropped[sym] != len(groups[sym]):  # guards the one-block-per-symbol assumption
            raise RuntimeError(f"symbol {sym}: {len(rows)} rows out + {dropped[sym]} dropped != {len(groups[sym])} in")
    if frame.empty:
        raise InsufficientDataError("no symbol has enough bars for the feature warm-up")
    frame = frame.drop(columns=_DROPPED)
    for col in (SYMBOL, TIMESTAMP):
        if frame[col].dtype != bars[col].dtype:
            frame[col] = frame[col].astype(bars[col].dtype)
    cols = feature_columns(features, cross_asset=reference is not None)
    if xs_on:
        frame = _cross_sectional(frame, features, dropped)
        cols = [*cols, *cross_sectional_columns(features)]
    for col in [*cols, "open", "high", "low", "close", "volume", *label_columns(frame)]:
        if frame[col].dtype != np.float64:
            frame[col] = frame[col].astype(np.float64)
    return PreprocessResult(frame=frame, feature_columns=cols, warmup_dropped=dropped, reference_symbol=ref_symbol,
                            cross_sectional=xs_on)


def _cross_sectional(frame: pd.DataFrame, features: FeatureConfig, dropped: dict[str, int]) -> pd.DataFrame:
    """Step 2: the ``xs_`` columns over the member rows of step 1 (all of its rows), inserted before the
    labels; rows with an undefined ``xs_`` value are dropped and added to ``dropped`` (updated in place).

    Raises:
        InsufficientDataError: no symbol has a row left after the beta warm-up.
    """
    xs = cross_sectional_step(frame, features)
    labels = label_columns(frame)
    base = [c for c in frame if c not in labels and c not in INPUT_COLUMNS]
    frame = pd.concat([frame[base], xs, frame[labels]], axis=1)
    complete = xs.notna().all(axis=1).to_numpy()
    for sym, n in frame.loc[~complete, SYMBOL].value_counts(sort=False).items():
        dropped[sym] += int(n)
    if not complete.any():
        raise InsufficientDataError(f"no symbol has a row left after the cross-sectional warm-up: each needs more "
                                    f"than features.beta_window - 1 = {features.beta_window - 1} complete rows")
    return frame[complete].reset_index(drop=True)
