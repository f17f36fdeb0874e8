"""Forecast-quality metrics for the classifier and the return head."""

from __future__ import annotations

import numpy as np


def information_coefficient(predicted: np.ndarray, realised: np.ndarray) -> float:
    """Pearson correlation of predicted and realised returns (the IC; Grinold & Kahn, 1999).

    0.0 when either side is constant or fewer than 3 pairs.
    """
    p, r = np.asarray(predicted, float), np.asarray(realised, float)
    if len(p) < 3 or np.std(p) == 0 or np.std(r) == 0:
        return 0.0
    return float(np.corrcoef(p, r)[0, 1])


def forecast_metrics(probs: np.ndarray, y_class: np.ndarray, expected_return: np.ndarray,
                     y_return: np.ndarray) -> dict[str, float]:
    """Accuracy, log loss (nats), majority-class baseline accuracy and IC on labelled rows.

    Args:
        probs: (n, 3) class probabilities [sell, hold, buy]; y_class: (n,) ints in {0, 1, 2}.
        expected_return, y_return: (n,) predicted and realised forward log returns.
    """
    y = np.asarray(y_class, dtype=int)
    n = len(y)
    if n == 0:
        raise ValueError("no labelled rows to score")
    eps = 1e-12
    return {
        "accuracy": float((probs.argmax(1) == y).mean()),
        "majority_baseline_accuracy": float(np.bincount(y, minlength=3).max() / n),
        "log_loss": float(-np.log(np.clip(probs[np.arange(n), y], eps, 1.0)).mean()),
        "ic": information_coefficient(expected_return, y_return),
        "n": float(n),
    }
