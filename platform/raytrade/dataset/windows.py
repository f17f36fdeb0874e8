"""Sliding windows over one symbol's rows, never crossing symbols.

A window ending at row t holds feature rows ``t-lookback+1 .. t`` (oldest first) and the labels of
row t; so a model input never contains a bar after t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raytrade.data.schema import BAR_COLUMNS, SYMBOL, TIMESTAMP


@dataclass(frozen=True)
class Windows:
    """Windowed arrays; ``n`` windows.

    Attributes:
        x: float32 ``(n, lookback, n_features)``.
        y_class: int64 ``(n,)`` (0 sell, 1 hold, 2 buy); -1 where the label is unknown.
        y_return: float32 ``(n,)`` forward log return over the horizon (NaN where unknown).
        next_return: float64 ``(n,)`` ln(close[t+1]/close[t]) (NaN where unknown).
        timestamp: ``(n,)`` datetime64 of the window's last bar; symbol: ``(n,)`` str.
    """

    x: np.ndarray
    y_class: np.ndarray
    y_return: np.ndarray
    next_return: np.ndarray
    timestamp: np.ndarray
    symbol: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def sliding_windows(values: np.ndarray, lookback: int) -> np.ndarray:
    """``(T, F) -> (T - lookback + 1, lookback, F)`` copy; window i covers rows i..i+lookback-1."""
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (T, n_features), got shape {values.shape}")
    if len(values) < lookback:
        return np.empty((0, lookback, values.shape[1]), dtype=values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, lookback, axis=0)  # (n, F, lookback)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def latest_windows(
    frame: pd.DataFrame, bars: pd.DataFrame, feature_columns: list[str], lookback: int, n_bars: int
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per symbol, the online-store window: the last ``lookback`` rows of UNSCALED features (with
    ``timestamp``) and the last ``n_bars`` raw bars (enough to recompute them: warm-up + lookback)."""
    out = {}
    raw = dict(tuple(bars.groupby(SYMBOL, sort=False)))
    for symbol, rows in frame.groupby(SYMBOL, sort=False):
        feats = rows[[TIMESTAMP, *feature_columns]].iloc[-lookback:].reset_index(drop=True)
        last = feats[TIMESTAMP].iloc[-1]
        sym_bars = raw[symbol]
        sym_bars = sym_bars[sym_bars[TIMESTAMP] <= last].iloc[-n_bars:][list(BAR_COLUMNS)].reset_index(drop=True)
        out[str(symbol)] = (feats, sym_bars)
    return out


def make_windows(frame: pd.DataFrame, feature_columns: list[str], lookback: int) -> Windows:
    """Build windows per symbol from (already scaled) feature columns and the ``label_*`` columns."""
    xs, ycls, yret, nxt, ts, sym = [], [], [], [], [], []
    for symbol, rows in frame.groupby(SYMBOL, sort=False):
        x = sliding_windows(rows[feature_columns].to_numpy(dtype=np.float32), lookback)
        if len(x) == 0:
            continue
        tail = rows.iloc[lookback - 1 :]
        xs.append(x)
        cls = tail["label_class"].to_numpy(dtype=np.float64)
        ycls.append(np.where(np.isnan(cls), -1, cls).astype(np.int64))
        yret.append(tail["label_return"].to_numpy(dtype=np.float32))
        nxt.append(tail["label_next_return"].to_numpy(dtype=np.float64))
        ts.append(tail[TIMESTAMP].to_numpy())
        sym.append(np.full(len(tail), str(symbol), dtype=object))
    if not xs:
        n_feat = len(feature_columns)
        return Windows(np.empty((0, lookback, n_feat), np.float32), np.empty(0, np.int64), np.empty(0, np.float32),
                       np.empty(0), np.empty(0, "datetime64[ns]"), np.empty(0, object))
    return Windows(np.concatenate(xs), np.concatenate(ycls), np.concatenate(yret), np.concatenate(nxt),
                   np.concatenate(ts), np.concatenate(sym))
