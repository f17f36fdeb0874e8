"""Chronological train | val | test splits with an embargo between the parts, one set of cut times for a universe.

The cut is made on time, never per symbol: the bars of the frame's timestamps (its *calendar*; for a universe the
union of every symbol's timestamps) are cut into ``[train][embargo][val][embargo][test]`` and every symbol's rows
follow their timestamps, so no symbol's train rows are later than another symbol's val or test rows (a per-symbol
cut would let a late-starting symbol's train rows overlap an early symbol's test period: look-ahead across assets).

The embargo (bars) must be at least ``horizon + lookback``: a train label looks ``horizon`` bars ahead, and the first
val window looks ``lookback`` bars back, so neither reaches into the other part (Lopez de Prado, *Advances in
Financial Machine Learning*, 2018, ch. 7). Labels and windows count a symbol's OWN bars, and on a union calendar a
symbol may have fewer bars than the calendar in the same span (weekday equities beside 24/7 crypto, a missed day),
so each symbol's train (val) rows are then *purged*: its last rows are left out until at least ``embargo`` of its
own rows lie between its last train (val) row and its first val (test) row. With one symbol, or symbols on one
calendar, nothing is purged and the cut equals a row cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raytrade.config import SplitConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.errors import InsufficientDataError

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Three chronological parts of the same frame (row order kept).

    Attributes:
        train, val, test: the parts' rows.
        embargo: calendar bars left out between train|val and val|test.
        purged: rows left out per symbol (beyond the calendar embargo) to keep ``embargo`` of its own rows between
            parts; empty when nothing was purged.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    embargo: int
    purged: dict[str, int] = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}


def purge_between(frame: pd.DataFrame, part: np.ndarray, earlier: int, later: int, embargo: int,
           purged: dict[str, int]) -> None:
    """Per symbol, move rows of part ``earlier`` to -1 (left out) until ``embargo`` rows of the symbol lie between
    its last ``earlier`` row and its first ``later`` row (in place). ``part`` holds each row's part index (-1 =
    embargo); ``frame``'s rows are in time order within each symbol; ``purged`` counts the rows moved per symbol."""
    for symbol, idx in frame.groupby(SYMBOL, sort=False).indices.items():
        p = part[idx]
        after = np.flatnonzero(p == later)
        before = np.flatnonzero(p == earlier)
        if not len(after) or not len(before):
            continue
        # rows are in time order within a symbol: positions are its own bar counts
        excess = embargo - (after[0] - before[-1] - 1)
        if excess > 0:
            drop = before[-excess:]
            part[idx[drop]] = -1
            purged[str(symbol)] = purged.get(str(symbol), 0) + len(drop)


def chronological_split(frame: pd.DataFrame, cfg: SplitConfig, embargo: int, min_rows: int = 1) -> Split:
    """Split a frame of one or many symbols into train/val/test by time, with ``embargo`` bars between parts.

    Args:
        frame: rows of one or many symbols, sorted by timestamp within each symbol.
        cfg: fractions of the calendar's usable bars (after the two embargoes) for train/val/test.
        embargo: bars of the calendar left out between train|val and val|test (and, per symbol, at least this many
            of its own rows: see the module docstring).
        min_rows: fewest calendar bars each part must get.

    Returns:
        :class:`Split`; each part keeps the frame's row order.

    Raises:
        InsufficientDataError: too few bars for the fractions, embargo and ``min_rows``.
    """
    calendar = np.unique(frame[TIMESTAMP].to_numpy())
    n = len(calendar)
    usable = n - 2 * embargo
    n_train = int(usable * cfg.train)
    n_val = int(usable * cfg.val)
    n_test = usable - n_train - n_val
    if min(n_train, n_val, n_test) < min_rows:
        symbols = list(pd.unique(frame[SYMBOL]))
        what = f"symbol {symbols[0]}" if len(symbols) == 1 else f"the universe of {len(symbols)} symbols"
        raise InsufficientDataError(
            f"{what}: {n} bars are too few for a {cfg.train}/{cfg.val}/{cfg.test} split with "
            f"embargo {embargo} bars and at least {min_rows} bars per part"
        )
    val_start = n_train + embargo
    test_start = val_start + n_val + embargo
    bar = np.searchsorted(calendar, frame[TIMESTAMP].to_numpy())
    part = np.full(len(frame), -1, dtype=np.int64)
    part[bar < n_train] = 0
    part[(bar >= val_start) & (bar < val_start + n_val)] = 1
    part[bar >= test_start] = 2
    purged: dict[str, int] = {}
    purge_between(frame, part, 0, 1, embargo, purged)
    purge_between(frame, part, 1, 2, embargo, purged)
    out = {name: frame[part == i].reset_index(drop=True) for i, name in enumerate(PARTS)}
    return Split(train=out["train"], val=out["val"], test=out["test"], embargo=embargo, purged=purged)
