"""Forward-return labels. Every label column starts with ``label_`` and looks into the FUTURE:
never feed one to a model as an input.

- ``label_return``: ln(close[t+h] / close[t]) over the horizon h (bars), a fraction in log units.
- ``label_class``: 0 = sell (label_return < -threshold), 1 = hold, 2 = buy (> threshold).
- ``label_next_return``: ln(close[t+1] / close[t]), the return earned by a position chosen at the
  close of bar t; used for rewards and backtests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raytrade.config import LabelConfig

LABEL_PREFIX = "label_"
CLASS_NAMES = ("sell", "hold", "buy")
SELL, HOLD, BUY = 0, 1, 2


def add_labels(frame: pd.DataFrame, cfg: LabelConfig) -> pd.DataFrame:
    """Add ``label_*`` columns to ONE symbol's rows (oldest first); the last rows get NaN labels.

    Returns a new DataFrame; input rows are neither dropped nor reordered.
    """
    log_close = np.log(frame["close"].to_numpy(dtype=np.float64))
    n = len(log_close)
    fwd = np.full(n, np.nan)
    if n > cfg.horizon:
        fwd[: n - cfg.horizon] = log_close[cfg.horizon :] - log_close[: n - cfg.horizon]
    nxt = np.full(n, np.nan)
    if n > 1:
        nxt[:-1] = np.diff(log_close)
    cls = np.where(fwd > cfg.threshold, BUY, np.where(fwd < -cfg.threshold, SELL, HOLD)).astype(float)
    cls[np.isnan(fwd)] = np.nan
    out = frame.copy()
    out["label_return"] = fwd
    out["label_class"] = cls
    out["label_next_return"] = nxt
    return out


def label_columns(frame: pd.DataFrame) -> list[str]:
    """The ``label_*`` columns of a frame."""
    return [c for c in frame.columns if c.startswith(LABEL_PREFIX)]
