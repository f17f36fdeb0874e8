"""Forecast-quality metrics for the classifier and the return head."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import f1_score


def information_coefficient(predicted: np.ndarray, realised: np.ndarray) -> float:
    """Pearson correlation of predicted and realised returns (the IC; Grinold & Kahn, 1999).

    0.0 when either side is constant or fewer than 3 pairs.
    """
    p, r = np.asarray(predicted, float), np.asarray(realised, float)
    if len(p) < 3 or np.std(p) == 0 or np.std(r) == 0:
        return 0.0
    return float(np.corrcoef(p, r)[0, 1])


def log_loss(probs: np.ndarray, y_class: np.ndarray) -> float:
    """Mean cross-entropy (nats) of the true class: ``-mean(ln p[y])``, probabilities clipped at 1e-12.

    Args: probs (n, 3) [sell, hold, buy]; y_class (n,) ints in {0, 1, 2}. Raises ValueError on no rows.
    """
    y = np.asarray(y_class, dtype=int)
    if len(y) == 0:
        raise ValueError("no labelled rows to score")
    return float(-np.log(np.clip(np.asarray(probs)[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """:func:`macro_f1` of the rows summarised by a (true, predicted) confusion matrix of counts
    ``(3, 3)``: the same value as on the rows themselves, at the cost of 9 weighted cells."""
    counts = np.asarray(confusion, dtype=np.float64).reshape(9)
    used = counts > 0
    if not used.any():
        return 0.0
    true, pred = np.divmod(np.arange(9), 3)  # cell = 3 * true + predicted
    return macro_f1(pred[used], true[used], sample_weight=counts[used])


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
    return {
        "accuracy": float((probs.argmax(1) == y).mean()),
        "majority_baseline_accuracy": float(np.bincount(y, minlength=3).max() / n),
        "log_loss": log_loss(probs, y),
        "ic": information_coefficient(expected_return, y_return),
        "n": float(n),
    }


def directional_accuracy(expected_return: np.ndarray, realised: np.ndarray) -> float:
    """Share of rows where the sign of the predicted return matches the sign of the realised one.

    Rows whose realised return is exactly 0 are excluded (no direction to call); a predicted 0
    on the remaining rows counts as a miss. NaN when no row is left.

    Args:
        expected_return, realised: (n,) predicted and realised forward log returns.
    """
    p, r = np.asarray(expected_return, float), np.asarray(realised, float)
    if p.shape != r.shape:
        raise ValueError(f"expected_return and realised must have the same shape, got {p.shape} and {r.shape}")
    moved = r != 0
    if not moved.any():
        return float("nan")
    return float((np.sign(p[moved]) == np.sign(r[moved])).mean())


def macro_f1(probs_or_pred: np.ndarray, y_class: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Macro-averaged F1 score (unweighted mean of the per-class F1) of the buy/hold/sell classifier.

    Averaged over the classes present in the labels or the predictions of these rows; a class
    never predicted (or never true) scores F1 = 0 (``sklearn.metrics.f1_score``, ``zero_division=0``).

    Args:
        probs_or_pred: (n, 3) class probabilities [sell, hold, buy] (argmax taken) or (n,) ints.
        y_class: (n,) ints in {0, 1, 2}.
        sample_weight: optional (n,) non-negative row weights (e.g. bootstrap multiplicities).
    """
    pred = np.asarray(probs_or_pred)
    pred = pred.argmax(1) if pred.ndim == 2 else pred.astype(int)
    y = np.asarray(y_class, dtype=int)
    if len(y) == 0:
        raise ValueError("no labelled rows to score")
    return float(f1_score(y, pred, average="macro", zero_division=0.0,
                          sample_weight=sample_weight))


def rank_information_coefficient(predicted: np.ndarray, realised: np.ndarray) -> float:
    """Spearman rank correlation of predicted and realised returns (the rank IC).

    Robust to outliers and monotone transforms of the prediction, unlike the Pearson IC.
    0.0 when either side is constant or fewer than 3 pairs (as :func:`information_coefficient`).
    """
    p, r = np.asarray(predicted, float), np.asarray(realised, float)
    if len(p) < 3 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return 0.0
    return float(spearmanr(p, r).statistic)
