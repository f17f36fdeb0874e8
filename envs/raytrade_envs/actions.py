"""Action mapper: agent actions in ``Box(-1, 1, (A,))`` to target positions.

* **Single asset** (``A = 1``): ``target = clip(a, -1, 1)``; long-only: ``max(target, 0)``;
  position ``= target * max_position``, so ``|position| <= max_position``.
* **Portfolio** (``A >= 1`` assets): clip each ``a_i`` to ``[-1, 1]``; long-only: ``max(., 0)``;
  if the gross exposure ``sum_i |w_i| > 1`` rescale ``w <- w / sum_i |w_i|`` (gross 1); then
  ``positions = w * max_position``, so ``sum_i |positions_i| <= max_position``.
* **Portfolio with exposure limits** (``weight_limits`` given, the env's field of that name): THE mapping
  of a portfolio agent's action to target weights is ``project_weights(clip(a, -1, 1), **weight_limits)``
  (:func:`project_weights` below: long-only, per-asset cap, gross, net), the same function the portfolio
  backtest, the risk layer and Serve use; ``max_position`` and ``allow_short`` play no part (they must stay
  at 1.0 and True). Cash is ``1 - sum w``.

Invalid actions (``invalid_action``):

* ``"clip"`` (default): values outside ``[-1, 1]``, including ``+-inf``, are clipped to the bounds.
* ``"raise"``: any value outside ``[-1, 1]`` (including ``+-inf``) raises ``ValueError`` naming
  the value and its index.
* NaN always raises ``ValueError`` (it cannot be clipped to a meaningful position).

A wrongly sized action raises ``ValueError`` in both modes.

Exposure limits (:func:`project_weights`)
----------------------------------------
The one mapping from raw weights (any real numbers) to target weights that respect a portfolio's
limits (``PortfolioConfig``: ``long_only``, ``max_weight``, ``max_gross``, ``max_net``); the portfolio
env's action mapping, the portfolio backtest, the risk layer and Serve all pass weights through it.
In this order, each step only ever shrinks weights towards 0 (never grows one, never flips a sign):

1. long-only: ``w = max(w, 0)``;
2. per asset: ``w = clip(w, -max_weight, max_weight)``;
3. gross: if ``G = sum |w| > max_gross``: ``w = w / (G / max_gross)`` (all weights scaled down alike);
4. net: with ``L = sum max(w, 0)``, ``S = sum max(-w, 0)`` and ``N = L - S``: if ``N > max_net`` the longs
   are scaled by ``(max_net + S) / L``; if ``N < -max_net`` the shorts by ``(max_net + L) / S``; then
   ``|N| = max_net``. The factor is in ``[0, 1)`` (``N > max_net >= 0`` gives ``L > S + max_net``), so step 4
   keeps steps 1-3: no weight grows, and the gross falls by the amount cut from the side in excess.

Cash is ``1 - sum w`` (above 1 when net short). Steps 3 and 4 act only on a sum above its limit by more
than :data:`WEIGHT_TOLERANCE` (1e-12), so the result respects every limit to 1e-12 and projecting it
again returns it bit for bit (idempotent). :class:`ActionMapper`'s portfolio mode is this mapping with
``max_weight = max_net = 1`` and ``max_gross = 1`` (then ``* max_position``), except that it rescales
any gross above 1 exactly (no tolerance band), which is why it keeps its own code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from raytrade_envs._validate import as_float

__all__ = ["INVALID_ACTION_MODES", "WEIGHT_LIMIT_KEYS", "WEIGHT_TOLERANCE", "ActionMapper", "check_weight_limits",
           "project_weights"]

#: Accepted values of ``invalid_action``.
INVALID_ACTION_MODES: tuple[str, ...] = ("clip", "raise")

#: Absolute slack (fraction of equity) within which :func:`project_weights` treats a sum as inside its limit.
WEIGHT_TOLERANCE: float = 1e-12

#: The keys of an env's ``weight_limits`` (the keyword arguments of :func:`project_weights` after ``raw``).
WEIGHT_LIMIT_KEYS: tuple[str, ...] = ("long_only", "max_weight", "max_gross", "max_net")


def check_weight_limits(limits: Any, n_assets: int = 1) -> dict[str, Any]:
    """Validate exposure limits for :func:`project_weights`; returns a fresh dict of the four keys.

    Args:
        limits: a mapping with exactly the keys :data:`WEIGHT_LIMIT_KEYS`.
        n_assets: ``A``, only to run one projection of ``A`` zeros (which checks every range).

    Raises:
        ValueError: ``limits`` is not a mapping, misses or adds a key (named), ``long_only`` is not a bool, or a
            limit is out of its range (named, by :func:`project_weights`).
    """
    if not isinstance(limits, Mapping):
        raise ValueError(f"weight_limits must be a mapping of {list(WEIGHT_LIMIT_KEYS)}, got {limits!r}")
    missing = [k for k in WEIGHT_LIMIT_KEYS if k not in limits]
    extra = [k for k in limits if k not in WEIGHT_LIMIT_KEYS]
    if missing or extra:
        raise ValueError(f"weight_limits must have exactly the keys {list(WEIGHT_LIMIT_KEYS)}; "
                         f"missing {missing}, unknown {extra}")
    if not isinstance(limits["long_only"], (bool, np.bool_)):
        raise ValueError(f"weight_limits['long_only'] must be a bool, got {limits['long_only']!r}")
    out = {"long_only": bool(limits["long_only"])}
    for key in WEIGHT_LIMIT_KEYS[1:]:
        if isinstance(limits[key], (bool, np.bool_)):
            raise ValueError(f"weight_limits[{key!r}] must be a number, got {limits[key]!r}")
        out[key] = limits[key]
    project_weights(np.zeros(max(1, int(n_assets))), **out)  # ValueError naming a limit out of its range
    out.update({key: float(out[key]) for key in WEIGHT_LIMIT_KEYS[1:]})
    return out


def project_weights(raw: Any, *, long_only: bool, max_weight: float, max_gross: float, max_net: float) -> np.ndarray:
    """Target weights within the exposure limits, from raw weights (see the module docstring, "Exposure limits").

    Args:
        raw: ``(..., A)`` raw weights, any real numbers (``+-inf`` are clipped like any large value); the
            last axis is the assets, leading axes (bars, envs, requests) are independent rows.
        long_only: ``True`` maps negative weights to 0 (no shorts).
        max_weight: cap on ``|w_a|`` of each asset, fraction of equity, in ``(0, 1]``.
        max_gross: cap on the gross exposure ``sum_a |w_a|`` (> 0, finite; above 1 allows leverage).
        max_net: cap on the net exposure ``|sum_a w_a|`` (>= 0, finite).

    Returns:
        float64 array of ``raw``'s shape with, per row, ``w >= 0`` (long-only), ``|w_a| <= max_weight``,
        ``sum |w| <= max_gross + 1e-12`` and ``|sum w| <= max_net + 1e-12``; rows already inside the limits
        come back unchanged, and ``project_weights(project_weights(x)) == project_weights(x)`` exactly.
        Cash is ``1 - sum w``. Order of the steps: long-only, per-asset clip, gross scaling, net scaling of the
        side in excess (the limits of ``raytrade.config.PortfolioConfig``; the gross step is the gross
        rescaling of FinRL's / :class:`ActionMapper`'s portfolio action mapping).

    Raises:
        ValueError: ``raw`` is 0-d or has NaN (naming the first NaN's index), or a limit is out of its range.
    """
    mw = as_float(max_weight, "max_weight", 0.0, 1.0, low_open=True)
    mg = as_float(max_gross, "max_gross", 0.0, math.inf, low_open=True)
    mn = as_float(max_net, "max_net", 0.0, math.inf)
    w = np.array(raw, dtype=np.float64, copy=True)
    if w.ndim < 1:
        raise ValueError(f"raw weights must have shape (..., A), got a scalar {raw!r}")
    nan = np.isnan(w)
    if nan.any():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(nan)), w.shape))
        raise ValueError(f"raw weights contain NaN at index {idx}; a weight must be a number")
    if long_only:
        np.maximum(w, 0.0, out=w)
    np.clip(w, -mw, mw, out=w)
    gross = np.abs(w).sum(axis=-1, keepdims=True)
    over = gross > mg + WEIGHT_TOLERANCE
    if over.any():
        w = np.where(over, w / np.where(over, gross / mg, 1.0), w)
    longs = np.where(w > 0.0, w, 0.0).sum(axis=-1, keepdims=True)
    shorts = np.where(w < 0.0, -w, 0.0).sum(axis=-1, keepdims=True)
    net = longs - shorts
    too_long = net > mn + WEIGHT_TOLERANCE  # then longs > shorts + mn >= 0: the factor is in [0, 1)
    too_short = net < -(mn + WEIGHT_TOLERANCE)
    if too_long.any() or too_short.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            k_long = np.where(too_long, (mn + shorts) / longs, 1.0)
            k_short = np.where(too_short, (mn + longs) / shorts, 1.0)
        w = np.where(w > 0.0, w * k_long, np.where(w < 0.0, w * k_short, w))
    return w


class ActionMapper:
    """Maps actions to target positions (fractions of equity).

    Args:
        n_assets: ``A`` (>= 1), the action length.
        max_position: single asset: cap on ``|position|``; portfolio: cap on the gross exposure
            ``sum |positions|``. In ``(0, 1]``.
        allow_short: ``False`` maps negative targets to 0 (long-only).
        invalid_action: ``"clip"`` or ``"raise"`` (see the module docstring).
        portfolio: use the portfolio mapping (gross rescaling) even for ``A = 1``; the env sets it
            for 2-D returns. For ``A = 1`` both mappings give the same numbers.
        weight_limits: optional ``{"long_only", "max_weight", "max_gross", "max_net"}``: map with
            ``project_weights(clip(a, -1, 1), **weight_limits)`` instead (module docstring).

    Raises:
        ValueError: for a bad ``max_position`` or ``invalid_action``; ``weight_limits`` that is not a mapping
            of exactly those four keys, has a limit out of its range (named), or comes with ``max_position``
            other than 1 or ``allow_short=False``.
    """

    def __init__(
        self,
        n_assets: int = 1,
        max_position: float = 1.0,
        allow_short: bool = True,
        invalid_action: str = "clip",
        portfolio: bool = False,
        weight_limits: Mapping[str, Any] | None = None,
    ) -> None:
        if invalid_action not in INVALID_ACTION_MODES:
            raise ValueError(f"invalid_action must be one of {INVALID_ACTION_MODES}, got {invalid_action!r}")
        self.n_assets = int(n_assets)
        if self.n_assets < 1:
            raise ValueError(f"n_assets must be >= 1, got {n_assets!r}")
        self.max_position = as_float(max_position, "max_position", 0.0, 1.0, low_open=True)
        self.allow_short = bool(allow_short)
        self.invalid_action = invalid_action
        self._raise = invalid_action == "raise"
        self.portfolio = bool(portfolio) or self.n_assets > 1
        self.weight_limits = None if weight_limits is None else check_weight_limits(weight_limits, self.n_assets)
        if self.weight_limits is not None and (self.max_position != 1.0 or not self.allow_short):
            raise ValueError(
                "weight_limits replaces max_position and allow_short (the mapping is project_weights(clip(action, "
                f"-1, 1), **weight_limits)); leave them at 1.0 and True, got max_position={self.max_position!r}, "
                f"allow_short={self.allow_short!r} (use weight_limits' max_gross / long_only instead)"
            )

    # ----------------------------------------------------------- errors
    def _bad_value(self, a: np.ndarray) -> None:
        """Raise for NaN anywhere, and (raise mode) for values outside [-1, 1]; ``a`` is float64."""
        nan = np.isnan(a)
        if nan.any():
            idx = np.unravel_index(int(np.argmax(nan)), a.shape)
            raise ValueError(f"action contains NaN at index {tuple(int(i) for i in idx)}; NaN actions are rejected")
        if self._raise:
            out = (a > 1.0) | (a < -1.0)
            if out.any():
                idx = np.unravel_index(int(np.argmax(out)), a.shape)
                raise ValueError(
                    f"action value {float(a[idx])!r} at index {tuple(int(i) for i in idx)} is outside [-1, 1] "
                    "(invalid_action='raise'; use invalid_action='clip' to clip it)"
                )

    # ------------------------------------------------------------ scalar
    def map_single(self, action: Any) -> float:
        """Target position of a one-asset env as a Python float (the hot path).

        Args:
            action: anything with exactly one number: an array of shape ``(1,)`` (as from the
                action space), a 0-d array, a float or int.

        Raises:
            ValueError: for NaN, a wrongly sized action, or (``"raise"``) a value outside [-1, 1].
        """
        if type(action) is np.ndarray and action.size == 1:
            a = action.item()
        elif type(action) is float or type(action) is int:
            a = float(action)
        else:
            arr = np.asarray(action, dtype=np.float64)
            if arr.size != 1:
                raise ValueError(f"action must contain exactly {self.n_assets} element(s), got shape {arr.shape}")
            a = float(arr.reshape(-1)[0])
        if not -1.0 <= a <= 1.0:  # NaN, +-inf or out of range
            if math.isnan(a):
                raise ValueError("action contains NaN at index (0,); NaN actions are rejected")
            if self._raise:
                raise ValueError(
                    f"action value {a!r} at index (0,) is outside [-1, 1] "
                    "(invalid_action='raise'; use invalid_action='clip' to clip it)"
                )
            a = 1.0 if a > 1.0 else -1.0
        if self.weight_limits is not None:
            return float(project_weights(np.array([a]), **self.weight_limits)[0])
        if a < 0.0 and not self.allow_short:
            a = 0.0
        return a * self.max_position

    # ------------------------------------------------------------- vector
    def map(self, action: Any) -> np.ndarray:
        """Target positions ``(A,)`` float64 for one action of shape ``(A,)`` (or ``A`` numbers).

        Raises:
            ValueError: for NaN, a wrongly sized action, or (``"raise"``) a value outside [-1, 1].
        """
        a = np.asarray(action, dtype=np.float64)
        if a.size != self.n_assets:
            raise ValueError(f"action must contain exactly {self.n_assets} element(s), got shape {a.shape}")
        a = a.reshape(self.n_assets)
        if not ((a >= -1.0) & (a <= 1.0)).all():
            self._bad_value(a)  # NaN, or out of range in raise mode: report the index within the action
        return self.map_batch(a.reshape(1, self.n_assets))[0]

    def map_batch(self, actions: Any) -> np.ndarray:
        """Target positions ``(N, A)`` float64 for actions of shape ``(N, A)``.

        Raises:
            ValueError: for NaN, a wrong shape, or (``"raise"``) a value outside [-1, 1].
        """
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.n_assets:
            raise ValueError(f"actions must have shape (N, {self.n_assets}), got shape {a.shape}")
        lo = -1.0 if self.allow_short else 0.0
        w = np.clip(a, lo, 1.0)
        if not (w == a).all():  # something was clipped, or NaN: check the originals
            self._bad_value(a)
        if self.weight_limits is not None:
            return project_weights(w, **self.weight_limits)
        if self.portfolio and self.n_assets > 1:
            gross = np.abs(w).sum(axis=1)
            over = gross > 1.0
            if over.any():
                w[over] /= gross[over, None]
        if self.max_position != 1.0:
            w *= self.max_position
        return w
