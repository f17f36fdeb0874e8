"""Confidence intervals for statistics of time series by the stationary bootstrap.

Rows of a (possibly autocorrelated) series are resampled in blocks of random, geometrically
distributed length (D. N. Politis & J. P. Romano, "The Stationary Bootstrap", JASA 89(428), 1994),
via ``arch.bootstrap.StationaryBootstrap``. The default expected block length is the automatic
choice of Politis & White (2004), corrected by Patton, Politis & White (2009)
(``arch.bootstrap.optimal_block_length``). Intervals are percentile intervals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length

__all__ = ["MIN_BOOTSTRAP_ROWS", "bootstrap_ci", "default_block_length"]

#: Fewer rows than this and :func:`bootstrap_ci` returns NaN bounds (no meaningful resampling).
MIN_BOOTSTRAP_ROWS = 10


def default_block_length(x: Any) -> float:
    """Expected block length (rows) for the stationary bootstrap of ``x``.

    Args:
        x: shape ``(n,)`` or ``(n, k)``; for ``k`` columns the mean of the per-column lengths.

    Returns:
        The Politis-White "stationary" optimal block length, clipped to ``[1, n]``; ``1.0`` (the
        i.i.d. bootstrap) when it is undefined, e.g. for a constant series or fewer than 3 rows.
    """
    arr = np.asarray(x, dtype=np.float64)
    n = arr.shape[0] if arr.ndim else 0
    if n < 3 or not np.all(np.isfinite(arr)):
        return 1.0
    if arr.ndim > 1:
        arr = arr.reshape(n, -1)
        arr = arr[:, np.ptp(arr, axis=0) > 0]  # constant columns have no dependence to measure
        if arr.shape[1] == 0:
            return 1.0
    elif np.ptp(arr) == 0:
        return 1.0
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            length = float(np.mean(optimal_block_length(arr)["stationary"].to_numpy()))
    except (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError):
        return 1.0
    if not math.isfinite(length):
        return 1.0
    return float(min(max(length, 1.0), n))


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    block_length: float | None = None,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and stationary-bootstrap percentile interval of ``statistic(*arrays)``.

    The arrays are resampled **jointly by row** (the same resampled row positions index every
    array), so paired quantities (prediction, outcome) stay paired.

    Args:
        statistic: ``statistic(*arrays) -> float``; it may return NaN for a degenerate resample.
        arrays: one or more arrays with the same number of rows ``n`` (first axis), oldest first.
        n_bootstrap: number of resamples (> 0).
        confidence: two-sided coverage of the interval, in (0, 1).
        block_length: expected block length in rows (>= 1); ``None`` = :func:`default_block_length`
            of the first array.
        seed: seed of the resampling; the result is deterministic given it.

    Returns:
        ``(point, low, high)``: ``point = statistic(*arrays)`` on the original rows; ``low``/``high``
        the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the statistic over
        the resamples, ignoring resamples where it is NaN (or infinite). ``low = high = nan`` when
        ``n < MIN_BOOTSTRAP_ROWS`` or no resample gave a finite value.

    Raises:
        ValueError: no arrays, arrays of different lengths, or a bad ``n_bootstrap``,
            ``confidence`` or ``block_length``.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrs):
        raise ValueError("bootstrap_ci arrays must have at least one dimension (rows)")
    n = arrs[0].shape[0]
    lengths = [a.shape[0] for a in arrs]
    if any(m != n for m in lengths):
        raise ValueError(f"bootstrap_ci arrays must have the same number of rows, got {lengths}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive int, got {n_bootstrap!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if block_length is not None and not (math.isfinite(block_length) and block_length >= 1.0):
        raise ValueError(f"block_length must be >= 1 row, got {block_length!r}")

    point = float(statistic(*arrs))
    if n < MIN_BOOTSTRAP_ROWS:
        return point, math.nan, math.nan

    length = default_block_length(arrs[0]) if block_length is None else float(block_length)
    resampler = StationaryBootstrap(length, np.arange(n), seed=int(seed))
    stats = np.empty(int(n_bootstrap), dtype=np.float64)
    for i, (pos, _) in enumerate(resampler.bootstrap(int(n_bootstrap))):
        idx = pos[0]
        stats[i] = float(statistic(*(a[idx] for a in arrs)))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return point, math.nan, math.nan
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return point, float(low), float(high)
