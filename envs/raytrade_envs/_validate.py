"""Argument validation shared by the environment modules (private)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_finite_array", "as_float", "as_int", "is_int"]


def is_int(value: Any) -> bool:
    """True for Python/numpy integers (but not bools)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int >= minimum``; ValueError naming ``name`` otherwise."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_float(value: Any, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval ``[low, high]`` (ends open when asked).

    Raises:
        ValueError: naming ``name`` if ``value`` is not a number, not finite or out of range.
    """
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    too_low = out <= low if low_open else out < low
    too_high = out >= high if high_open else out > high
    if not math.isfinite(out) or too_low or too_high:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in {lb}{low:g}, {high:g}{rb}, got {value!r}")
    return out


def as_finite_array(value: Any, name: str, ndims: tuple[int, ...], dtype: type) -> np.ndarray:
    """Convert ``value`` to a read-only, C-contiguous array of ``dtype`` and validate it.

    Args:
        value: array-like.
        name: argument name used in error messages.
        ndims: accepted numbers of dimensions.
        dtype: storage dtype (``np.float32`` or ``np.float64``).

    Raises:
        ValueError: naming ``name`` if the array has the wrong ndim, cannot be converted to
            numbers, is empty along a non-time axis, or contains non-finite values (also after
            the cast to ``dtype``, which catches float32 overflow).
    """
    try:
        arr64 = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric array-like: {exc}") from exc
    if arr64.ndim not in ndims:
        shapes = " or ".join("(T,)" if n == 1 else "(T, n_columns)" for n in ndims)
        raise ValueError(f"{name} must have shape {shapes}, got shape {arr64.shape}")
    if arr64.ndim == 2 and arr64.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {arr64.shape}")
    if not np.all(np.isfinite(arr64)):
        bad = np.argwhere(~np.isfinite(arr64))[0]
        raise ValueError(
            f"{name} contains non-finite values (NaN or inf), first at index {tuple(int(i) for i in bad)}"
        )
    arr = np.array(arr64, dtype=dtype, order="C", copy=True)  # own copy: never freeze the caller's array
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has values that overflow {np.dtype(dtype).name}")
    arr.setflags(write=False)
    return arr
