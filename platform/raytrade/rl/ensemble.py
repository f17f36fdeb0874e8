"""The ensemble combiner: one risk-limited target position from the forecaster and the agents.

Used by the backtest (vectorised over a series) and by the Serve ingress (one decision), so the
served decision and the backtested strategy are the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def normalise_weights(weights: Mapping[str, float], members: list[str]) -> dict[str, float]:
    """Weights of ``members`` (missing = 0) rescaled to sum to 1; equal weights if all are 0.

    Raises ValueError on a negative weight.
    """
    raw = {m: float(weights.get(m, 0.0)) for m in members}
    if any(w < 0 for w in raw.values()):
        raise ValueError(f"ensemble weights must be >= 0, got {raw}")
    total = sum(raw.values())
    if total <= 0:
        return {m: 1.0 / len(members) for m in members}
    return {m: w / total for m, w in raw.items()}


def combine_positions(
    positions: Mapping[str, np.ndarray | float], weights: Mapping[str, float], max_position: float = 1.0
) -> np.ndarray:
    """Weighted mean of member target positions, clipped to ``[-max_position, max_position]``.

    Args:
        positions: member name -> target position(s) in [-1, 1] (fraction of equity), same shape.
        weights: member name -> non-negative weight (normalised here).
        max_position: risk limit on |target position| (fraction of equity).
    """
    w = normalise_weights(weights, list(positions))
    combined = sum(w[name] * np.asarray(p, dtype=np.float64) for name, p in positions.items())
    return np.clip(combined, -max_position, max_position)
