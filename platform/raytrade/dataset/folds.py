"""Expanding-window walk-forward folds with an embargo, as row positions.

All sizes are in **rows** of one symbol's chronologically sorted frame of labelled rows (one row =
one bar). The last ``test_fraction`` of the rows is cut into ``n_folds`` consecutive test blocks;
fold ``k`` trains on everything before its test block, minus an embargo::

    fold k:  [train .............][embargo][val][embargo][test k]
             0                                            ^ test start of fold k

Training windows only expand from one fold to the next (they all start at row 0), no train or val
row lies at or after the fold's test start, and ``embargo`` rows separate train|val and val|test.
With ``embargo >= horizon + lookback`` a training label (which looks ``horizon`` bars ahead) never
overlaps the val/test bars, and the first val/test input window (which looks ``lookback`` bars
back) never contains a training bar: the purging/embargo of López de Prado, *Advances in Financial
Machine Learning*, Wiley, 2018, ch. 7, here applied to an expanding walk-forward instead of
combinatorial purged cross-validation (no fold trains on data after its test block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.dataset.splits import purge_between
from raytrade.errors import InsufficientDataError

__all__ = ["Fold", "expanding_folds", "fold_rows"]


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: row positions (``slice`` with step ``None``) in a chronologically
    sorted frame of labelled rows; ``frame.iloc[fold.train]`` etc. select the parts.

    Attributes:
        index: fold number, 0 = the earliest test block.
        train, val, test: half-open row ranges ``[start, stop)``, in that chronological order.
    """

    index: int
    train: slice
    val: slice
    test: slice

    def to_dict(self) -> dict[str, int | list[int]]:
        """JSON-friendly form: ``{"index": k, "train": [start, stop], "val": [...], "test": [...]}``."""
        return {
            "index": self.index,
            **{name: [part.start, part.stop] for name, part in
               (("train", self.train), ("val", self.val), ("test", self.test))},
        }


def expanding_folds(
    n_rows: int,
    n_folds: int,
    test_fraction: float,
    val_fraction: float,
    embargo: int,
    min_train_rows: int = 1,
) -> list[Fold]:
    """Cut ``n_rows`` chronologically sorted rows into expanding walk-forward folds.

    Test blocks: the last ``floor(n_rows * test_fraction)`` rows, split into ``n_folds``
    consecutive, non-overlapping blocks whose sizes differ by at most one row (together they tile
    that span exactly). For fold ``k`` with test block ``[t_k, t_{k+1})``:

    * its history is rows ``[0, t_k - embargo)`` (``span`` rows);
    * val is the last ``floor(span * val_fraction)`` rows of that history;
    * train is ``[0, val_start - embargo)``.

    Args:
        n_rows: labelled rows (bars) of one symbol, oldest first.
        n_folds: number of test blocks (> 0).
        test_fraction: share of the rows covered by the test blocks, in (0, 1).
        val_fraction: share of each fold's history (train + embargo + val) held out as val, in (0, 1).
        embargo: rows (bars) dropped between train|val and between val|test (>= 0); use at least
            ``horizon + lookback`` (see :attr:`raytrade.config.PipelineConfig.embargo`).
        min_train_rows: fewest train rows any fold may have (>= 1).

    Returns:
        ``n_folds`` :class:`Fold` objects, earliest test block first.

    Raises:
        ValueError: an argument is outside its domain (a programming error, not a data problem).
        InsufficientDataError: the rows are too few: a test block would be empty, or some fold
            would get an empty val part or fewer than ``min_train_rows`` train rows; the message
            names the numbers involved.
    """
    ints = {}
    for name, value in (("n_rows", n_rows), ("n_folds", n_folds), ("embargo", embargo),
                        ("min_train_rows", min_train_rows)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an int, got {value!r}")
        ints[name] = int(value)
    n_rows, n_folds, embargo, min_train_rows = (ints[k] for k in ("n_rows", "n_folds", "embargo", "min_train_rows"))
    if n_rows < 0 or n_folds < 1 or embargo < 0 or min_train_rows < 1:
        raise ValueError(f"need n_rows >= 0, n_folds >= 1, embargo >= 0 and min_train_rows >= 1; got "
                         f"n_rows={n_rows}, n_folds={n_folds}, embargo={embargo}, min_train_rows={min_train_rows}")
    for name, frac in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if isinstance(frac, bool) or not isinstance(frac, int | float | np.floating) or not 0.0 < frac < 1.0:
            raise ValueError(f"{name} must be a number in (0, 1), got {frac!r}")

    n_test = int(n_rows * test_fraction)
    if n_test < n_folds:
        raise InsufficientDataError(
            f"{n_rows} rows x test_fraction {test_fraction} = {n_test} test rows are too few for "
            f"{n_folds} non-empty test folds"
        )
    first_test = n_rows - n_test
    bounds = [first_test + (k * n_test) // n_folds for k in range(n_folds + 1)]

    folds = []
    for k in range(n_folds):
        test_start, test_stop = bounds[k], bounds[k + 1]
        span = max(test_start - embargo, 0)  # rows before the val|test embargo
        n_val = int(span * val_fraction)
        val_start = span - n_val
        n_train = val_start - embargo
        if n_val < 1 or n_train < min_train_rows:
            raise InsufficientDataError(
                f"walk-forward fold {k} of {n_folds}: test block starts at row {test_start} of {n_rows}; "
                f"with embargo {embargo} rows and val_fraction {val_fraction} it gets {max(n_train, 0)} train "
                f"and {n_val} val rows, but needs at least {min_train_rows} train and 1 val row"
            )
        folds.append(Fold(index=k, train=slice(0, n_train), val=slice(val_start, span),
                          test=slice(test_start, test_stop)))
    return folds


def fold_rows(labelled: pd.DataFrame, fold: Fold, embargo: int, lookback: int
              ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows of one fold whose positions count bars of the frame's calendar (its sorted unique timestamps; for
    one symbol, its rows), as :func:`raytrade.dataset.splits.chronological_split` cuts a universe.

    Args:
        labelled: labelled rows of one or many symbols, in time order within each symbol.
        fold: a fold of :func:`expanding_folds` over ``len(calendar)`` bars.
        embargo: bars between parts; a symbol with fewer own bars than the calendar in the gap has its last
            train (val) rows purged to keep ``embargo`` of its own rows (see :mod:`raytrade.dataset.splits`).
        lookback: bars per input window.

    Returns:
        ``(train, val, test_context)``: the test rows of each symbol preceded by its ``lookback - 1`` previous rows
        (features only: bars before the test block, never its labels), so the test block has one window per row
        once a symbol has that many rows before it.
    """
    calendar = np.unique(labelled[TIMESTAMP].to_numpy())
    bar = np.searchsorted(calendar, labelled[TIMESTAMP].to_numpy())
    part = np.full(len(labelled), -1, dtype=np.int64)
    for i, span in enumerate((fold.train, fold.val, fold.test)):
        part[(bar >= span.start) & (bar < span.stop)] = i
    purge_between(labelled, part, 0, 1, embargo, {})
    purge_between(labelled, part, 1, 2, embargo, {})
    context = []
    for _, idx in labelled.groupby(SYMBOL, sort=False).indices.items():
        test = np.flatnonzero(part[idx] == 2)
        if len(test):
            context.append(idx[max(0, test[0] - lookback + 1): test[-1] + 1])
    ctx = np.sort(np.concatenate(context)) if context else np.empty(0, dtype=np.int64)
    return labelled[part == 0], labelled[part == 1], labelled.iloc[ctx]
