"""One bar of the ``forecaster_risk_limited`` portfolio strategy: the one function the portfolio backtest and
``POST /portfolio`` both call, so a served decision is the backtest's decision on the same inputs.

* :func:`portfolio_decision`: one bar's expected returns, tradable mask, held weights, drawdown and turbulence ->
  target weights (top-k -> exposure limits -> the risk layer);
* :func:`portfolio_decisions`: it walked over the test bars on the limited book's own equity (what
  :func:`raytrade.stages.portfolio.portfolio_stage` computes for ``forecaster_risk_limited``);
* :func:`past_log_returns`: ``ln(close[t] / close[t-1])`` of a ``(T, A)`` close panel, the rows FinRL's turbulence
  index looks back on (the stage's and Serve's input to
  :func:`raytrade.rl.portfolio_risk.turbulence_index`).

Conventions: weights are fractions of equity per asset (cash = ``1 - sum w``), chosen at the close of bar ``t``;
expected returns are the forecaster's predicted log return over the label horizon (any real score works: only the
ranking matters); drawdown is ``1 - equity / running peak`` (fraction); turbulence is a squared Mahalanobis
distance (dimensionless).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raytrade.errors import ConfigError
from raytrade.evaluation.portfolio_baselines import top_k_weights
from raytrade.rl.portfolio_risk import StepFn, risk_limited_weights
from raytrade_envs.actions import project_weights

__all__ = ["past_log_returns", "portfolio_decision", "portfolio_decisions"]


def _vector(value: Any, name: str, n: int | None, dtype: Any = np.float64) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = "(A,)" if n is None else f"({n},)"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def portfolio_decision(
    expected_return: Any, tradable: Any, *, held: Any, drawdown: float = 0.0, turbulence: float = float("nan"),
    threshold: float = float("nan"), top_k: int, long_only: bool = True, max_weight: float = 1.0,
    max_gross: float = 1.0, max_net: float = 1.0, max_drawdown: float = 0.2, drawdown_cut: float = 0.5,
    rebalance: bool = True,
) -> np.ndarray:
    """Target weights of one bar of ``forecaster_risk_limited``, in this order:

    1. :func:`raytrade.evaluation.portfolio_baselines.top_k_weights` of ``expected_return`` among the tradable
       assets with a finite forecast (long the ``top_k`` best at ``1/k``; long/short when ``long_only`` is false:
       also short the ``top_k`` worst, ``+-1/(2k)``; ties go to the lower asset index);
    2. the exposure limits, :func:`raytrade_envs.actions.project_weights`;
    3. an asset that is not tradable gets its ``held`` weight instead (no order: the book keeps its units; the
       backtest's NaN target);
    4. the risk layer, :func:`raytrade.rl.portfolio_risk.risk_limited_weights`: the exposure limits again, times
       ``drawdown_cut`` while ``drawdown > max_drawdown``, all cash while ``turbulence > threshold`` (FinRL's
       turbulence rule, Yang et al. 2020; NaN turbulence or threshold: the rule is off).

    A tradable asset without a forecast (NaN) is never picked, so it is sold to 0 (as in the backtest). On a bar that
    is not a rebalance bar (``rebalance`` False) steps 1-3 are skipped: the book keeps its ``held`` weights, and only
    the risk layer acts on them, as on a held book (``held_book=True``: in drawdown the gross exposure is capped at
    ``drawdown_cut * max_gross``, not cut again on every bar).

    Args:
        expected_return: ``(A,)`` the forecaster's expected log return per asset at this bar; NaN = no forecast.
        tradable: ``(A,)`` bool, the order for the asset can fill at this bar.
        held: ``(A,)`` weights held now (the previous targets drifted with prices), fractions of equity, finite.
        drawdown: the book's ``1 - equity / running peak`` at this bar's close (fraction).
        turbulence, threshold: :func:`raytrade.rl.portfolio_risk.turbulence_index` at this bar and
            :func:`raytrade.rl.portfolio_risk.turbulence_threshold` (of the TRAIN bars).
        top_k, long_only, max_weight, max_gross, max_net: ``portfolio.*`` (weights are fractions of equity).
        max_drawdown, drawdown_cut: ``ensemble.max_drawdown`` (fraction) and ``ensemble.drawdown_cut``
            (exposure multiplier).
        rebalance: this bar is one of the strategy's rebalance bars (``portfolio.forecaster_rebalance_bars``).

    Returns:
        ``(A,)`` float64 target weights (cash = ``1 - sum``).

    Raises:
        ValueError: shapes differ, ``tradable`` is not boolean, a ``held`` weight is not finite, or an exposure limit
            is out of range (from ``project_weights``).
        ConfigError: ``top_k`` < 1, ``max_drawdown`` or ``drawdown_cut`` out of range.
    """
    scores = _vector(expected_return, "expected_return", None)
    n = scores.shape[0]
    mask = np.asarray(tradable)
    if mask.shape != (n,) or mask.dtype != bool:
        raise ValueError(f"tradable must be a boolean array of shape ({n},), got {mask.dtype} {mask.shape}")
    kept = _vector(held, "held", n)
    if not np.isfinite(kept).all():
        raise ValueError(f"held weights must be finite, got {kept.tolist()}")
    if rebalance:
        candidates = (mask & np.isfinite(scores))[None]
        wanted = project_weights(top_k_weights(scores[None], candidates, top_k, long_short=not long_only)[0],
                                 long_only=long_only, max_weight=max_weight, max_gross=max_gross, max_net=max_net)
        desired = np.where(mask, wanted, kept)
    else:
        desired = kept
    return risk_limited_weights(desired, drawdown=float(drawdown), turbulence=float(turbulence),
                                threshold=float(threshold), long_only=long_only, max_weight=max_weight,
                                max_gross=max_gross, max_net=max_net, max_drawdown=max_drawdown,
                                drawdown_cut=drawdown_cut, held_book=not rebalance)


def portfolio_decisions(
    expected_returns: Any, tradable: Any, step: StepFn, *, turbulence: Any = None, threshold: float = float("nan"),
    top_k: int, long_only: bool = True, max_weight: float = 1.0, max_gross: float = 1.0, max_net: float = 1.0,
    max_drawdown: float = 0.2, drawdown_cut: float = 0.5, rebalance: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`portfolio_decision` walked over ``T`` bars on the limited book's own equity (the portfolio backtest's
    ``forecaster_risk_limited``; same numbers as ``top_k_weights`` -> ``project_weights`` ->
    :func:`raytrade.rl.portfolio_risk.risk_limit_weights` with NaN targets where not tradable).

    At bar ``t`` the drawdown is ``1 - equity / peak`` of the net returns of bars ``< t`` (equity starts at 1) and
    ``held`` the weights the book holds after bar ``t - 1`` (zeros first); the target is traded with
    ``net, held = step(t, held, target)``.

    Args:
        expected_returns: ``(T, A)`` expected log returns known at the close of each bar (NaN = none).
        tradable: ``(T, A)`` bool.
        step: ``(t, held (A,), target (A,)) -> (simple net return of bar t, weights held after it (A,))``.
        turbulence: ``(T,)`` turbulence index (None: no turbulence rule); threshold: as :func:`portfolio_decision`.
        top_k, long_only, max_weight, max_gross, max_net, max_drawdown, drawdown_cut: as :func:`portfolio_decision`.
        rebalance: ``(T,)`` bool, the rebalance bars (None: every bar).

    Returns:
        ``(targets (T, A), net (T,))``: the targets traded and each bar's simple net return (fractions).

    Raises:
        ValueError: shapes differ; and as :func:`portfolio_decision`.
    """
    scores = np.asarray(expected_returns, dtype=np.float64)
    mask = np.asarray(tradable)
    if scores.ndim != 2 or mask.shape != scores.shape:
        raise ValueError(f"expected_returns and tradable must be (T, A) of one shape, got {scores.shape} and "
                         f"{mask.shape}")
    n_bars, n_assets = scores.shape
    turb = np.full(n_bars, np.nan) if turbulence is None else np.asarray(turbulence, dtype=np.float64)
    if turb.shape != (n_bars,):
        raise ValueError(f"turbulence must have shape ({n_bars},), got {turb.shape}")
    if not 0.0 < max_drawdown <= 1.0:  # before the first bar, as risk_limit_weights
        raise ConfigError(f"ensemble.max_drawdown must be in (0, 1], got {max_drawdown!r}")
    if not 0.0 <= drawdown_cut <= 1.0:
        raise ConfigError(f"ensemble.drawdown_cut must be in [0, 1], got {drawdown_cut!r}")
    reb = np.ones(n_bars, dtype=bool) if rebalance is None else np.asarray(rebalance, dtype=bool)
    if reb.shape != (n_bars,):
        raise ValueError(f"rebalance must have shape ({n_bars},), got {reb.shape}")
    targets = np.empty((n_bars, n_assets))
    net = np.empty(n_bars)
    held = np.zeros(n_assets)
    equity = peak = 1.0
    for t in range(n_bars):
        targets[t] = portfolio_decision(
            scores[t], mask[t], held=held, drawdown=1.0 - equity / peak, turbulence=float(turb[t]),
            threshold=threshold, top_k=top_k, long_only=long_only, max_weight=max_weight, max_gross=max_gross,
            max_net=max_net, max_drawdown=max_drawdown, drawdown_cut=drawdown_cut, rebalance=bool(reb[t]))
        r, held = step(t, held.copy(), targets[t].copy())
        held = np.asarray(held, dtype=np.float64)
        net[t] = r
        equity *= 1.0 + r
        peak = max(peak, equity)
    return targets, net


def past_log_returns(close: Any) -> np.ndarray:
    """``(T, A)`` ``ln(close[t] / close[t-1])`` of a close panel on one calendar (NaN where either bar is missing,
    and on the first row): the returns realised by the close of ``t`` that FinRL's turbulence index, the
    minimum-variance baseline and the slippage volatility look back on.

    Raises:
        ValueError: ``close`` is not 2-D.
    """
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"close must be 2-D (T, A), got shape {c.shape}")
    out = np.full(c.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.log(c[1:] / c[:-1])
    return out
