"""Chronological train | val | test splits with an embargo between the parts.

Per symbol, rows are cut by time: ``[train][embargo][val][embargo][test]``. The embargo (bars) must
be at least ``horizon + lookback``: a train label looks ``horizon`` bars ahead, and the first val
window looks ``lookback`` bars back, so neither reaches into the other part (Lopez de Prado,
*Advances in Financial Machine Learning*, 2018, ch. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from raytrade.config import SplitConfig
from raytrade.data.schema import SYMBOL
from raytrade.errors import InsufficientDataError

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Three chronological parts of the same frame (row order kept)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    embargo: int

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}


def chronological_split(frame: pd.DataFrame, cfg: SplitConfig, embargo: int, min_rows: int = 1) -> Split:
    """Split each symbol's rows (oldest first) into train/val/test with ``embargo`` bars between.

    Args:
        frame: rows of one or many symbols, sorted by timestamp within symbol.
        cfg: fractions of the usable rows (after the two embargoes) for train/val/test.
        embargo: bars left out between train|val and val|test.
        min_rows: fewest rows each part of each symbol must get.

    Raises:
        InsufficientDataError: a symbol has too few rows for the fractions, embargo and min_rows.
    """
    parts: dict[str, list[pd.DataFrame]] = {p: [] for p in PARTS}
    for symbol, rows in frame.groupby(SYMBOL, sort=False):
        n = len(rows)
        usable = n - 2 * embargo
        n_train = int(usable * cfg.train)
        n_val = int(usable * cfg.val)
        n_test = usable - n_train - n_val
        if min(n_train, n_val, n_test) < min_rows:
            raise InsufficientDataError(
                f"symbol {symbol}: {n} rows are too few for a {cfg.train}/{cfg.val}/{cfg.test} split with "
                f"embargo {embargo} bars and at least {min_rows} rows per part"
            )
        val_start = n_train + embargo
        test_start = val_start + n_val + embargo
        parts["train"].append(rows.iloc[:n_train])
        parts["val"].append(rows.iloc[val_start : val_start + n_val])
        parts["test"].append(rows.iloc[test_start:])
    out = {p: pd.concat(v).reset_index(drop=True) for p, v in parts.items()}
    return Split(train=out["train"], val=out["val"], test=out["test"], embargo=embargo)
