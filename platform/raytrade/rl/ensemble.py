"""Agent ensembles and the risk layer: one risk-limited target position from the forecaster and the agents.

* :func:`combine_positions`: fixed-weight mean of member positions (the Serve combiner's rule).
* :func:`rolling_selection` (:func:`best_member` per window): FinRL's ensemble strategy (Yang, Liu, Zhong,
  Walid, "Deep Reinforcement Learning for Automated Stock Trading: An Ensemble Strategy", ICAIF 2020): trade
  each window with the member that had the best Sharpe over the previous window.
* :func:`sharpe_vote`: each window, weights = softmax(previous-window Sharpe / temperature) over all members.
* :func:`risk_limit`: caps |position| and cuts exposure while the strategy's own drawdown exceeds a limit.

Conventions: positions are fractions of equity in [-1, 1] held from the close of bar t to the close of t+1;
member returns are per-bar simple net returns after costs (fractions). Every decision for bar t uses only
returns realised by the close of bar t (the previous window's), so the ensembles are causal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from raytrade.evaluation.metrics import sharpe_ratio


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


@dataclass
class EnsembleResult:
    """Positions ``(n,)`` (or target weights ``(n, A)``) of an ensemble and, per window, its start bar and member
    weights (sum to 1)."""

    positions: np.ndarray
    window_starts: list[int]
    weights: list[dict[str, float]]

    @property
    def final_weights(self) -> dict[str, float]:
        """The weights in force at the last bar (what a live combiner would use next)."""
        return self.weights[-1]

    def to_dict(self) -> dict[str, object]:
        return {"window_starts": self.window_starts, "weights": self.weights}


def sharpe_or_zero(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualised Sharpe (:func:`raytrade.evaluation.metrics.sharpe_ratio`), 0.0 when undefined (fewer than
    2 bars or a flat series): how ensembles and agent validation score a member."""
    if len(returns) < 2 or not np.std(returns) > 0:
        return 0.0
    value = sharpe_ratio(returns, periods_per_year)
    return float(value) if np.isfinite(value) else 0.0


def _windowed(
    member_positions: Mapping[str, np.ndarray], member_returns: Mapping[str, np.ndarray],
    prior_sharpe: Mapping[str, float], window_bars: int, periods_per_year: float,
    weigh: Callable[[dict[str, float]], dict[str, float]],
) -> EnsembleResult:
    names = list(member_positions)
    if not names:
        raise ValueError("an ensemble needs at least one member")
    n = len(next(iter(member_positions.values())))
    for name in names:
        if len(member_positions[name]) != n or len(member_returns[name]) != n:
            raise ValueError(f"member {name!r}: positions and returns must all have length {n}")
    if window_bars < 1:
        raise ValueError(f"window_bars must be >= 1, got {window_bars}")
    positions = np.zeros(np.shape(member_positions[names[0]]), dtype=np.float64)  # (n,) or (n, A) weights
    starts, weights = [], []
    scores = {name: float(prior_sharpe.get(name, 0.0)) for name in names}
    for start in range(0, n, window_bars):
        if start > 0:  # the previous window's realised returns (all known by the close of bar `start`)
            prev = slice(start - window_bars, start)
            scores = {name: sharpe_or_zero(np.asarray(member_returns[name])[prev], periods_per_year) for name in names}
        w = weigh(scores)
        end = min(start + window_bars, n)
        positions[start:end] = sum(w[name] * np.asarray(member_positions[name][start:end], np.float64)
                                   for name in names)
        starts.append(start)
        weights.append(w)
    return EnsembleResult(np.clip(positions, -1.0, 1.0), starts, weights)


def rolling_selection(
    member_positions: Mapping[str, np.ndarray], member_returns: Mapping[str, np.ndarray],
    prior_sharpe: Mapping[str, float], window_bars: int, periods_per_year: float,
) -> EnsembleResult:
    """FinRL's rolling ensemble: each window of ``window_bars`` bars is traded by the single member with the
    best annualised Sharpe over the previous window (``prior_sharpe``, e.g. on VAL, for the first window).

    Args:
        member_positions, member_returns: name -> ``(n,)`` positions and net returns of each member traded alone.
        prior_sharpe: name -> Sharpe used to pick the member of the first window.
        window_bars: bars per window (> 0); periods_per_year: to annualise the Sharpe.

    Members may also be portfolios: ``(n, A)`` target weights per member (the universe pipeline's agents), combined
    row by row the same way. Ties go to the member listed first. Raises ValueError on mismatched lengths or no
    members.
    """
    return _windowed(member_positions, member_returns, prior_sharpe, window_bars, periods_per_year, best_member)


def best_member(scores: Mapping[str, float]) -> dict[str, float]:
    """One-hot weights on the member with the highest score (ties: the first listed)."""
    best = max(scores, key=lambda k: scores[k])
    return {name: float(name == best) for name in scores}


def sharpe_vote(
    member_positions: Mapping[str, np.ndarray], member_returns: Mapping[str, np.ndarray],
    prior_sharpe: Mapping[str, float], window_bars: int, periods_per_year: float, temperature: float = 1.0,
) -> EnsembleResult:
    """Weighted vote: each window, ``w = softmax(Sharpe / temperature)`` over the previous window's Sharpe
    (``prior_sharpe`` for the first), target = ``sum_i w_i * position_i`` (or ``(n, A)`` weights, row by row).
    Arguments as :func:`rolling_selection`.

    Raises ValueError on a non-positive temperature, mismatched lengths or no members.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def softmax(scores: dict[str, float]) -> dict[str, float]:
        z = np.array(list(scores.values())) / temperature
        e = np.exp(z - z.max())
        return dict(zip(scores, (e / e.sum()).tolist(), strict=True))

    return _windowed(member_positions, member_returns, prior_sharpe, window_bars, periods_per_year, softmax)


def risk_limited_position(position: float, drawdown: float, max_position: float = 1.0, max_drawdown: float = 0.2,
                          drawdown_cut: float = 0.5) -> tuple[float, bool]:
    """One bar of the risk layer: ``position`` capped to ``+-max_position``, times ``drawdown_cut`` when the
    account's ``drawdown`` (``1 - equity / running peak``, a fraction) exceeds ``max_drawdown``.

    The backtest (:func:`risk_limit`) and the served combiner both use this, so they cut identically.

    Returns:
        ``(limited position, whether the drawdown cut applied)``.
    """
    cut = bool(drawdown > max_drawdown)
    limited = float(np.clip(position, -max_position, max_position))
    return (limited * drawdown_cut if cut else limited), cut


def risk_limit(
    positions: np.ndarray, bar_step: Callable[[int, float, float], tuple[float, float]], max_position: float = 1.0,
    max_drawdown: float = 0.2, drawdown_cut: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The risk layer: ``|position| <= max_position``, times ``drawdown_cut`` while in excess drawdown.

    Walks the bars in order: the target for bar t is capped, and multiplied by ``drawdown_cut`` if the
    strategy's drawdown at the close of bar t (``1 - equity / running peak``, from the returns of bars < t)
    exceeds ``max_drawdown``; then the book trades to it: ``bar_step(t, held, target)``.

    Args:
        positions: ``(n,)`` desired target positions (fractions of equity).
        bar_step: ``(t, held, target) -> (simple net return of bar t after costs, position held after it)``,
            the book of :mod:`raytrade_envs.accounting` (e.g. from :func:`raytrade_envs.bar_step` over the
            bars traded: ``held`` is the previous target drifted with prices).
        max_position: cap on |position| in (0, 1]; max_drawdown: trigger as a fraction in (0, 1];
        drawdown_cut: exposure multiplier in [0, 1] while triggered.

    Returns:
        ``(positions, in_drawdown)``: the limited targets ``(n,)`` and a boolean ``(n,)`` of the bars cut.
    """
    pos = np.asarray(positions, dtype=np.float64)
    out = np.empty_like(pos)
    cut = np.zeros(len(pos), dtype=bool)
    equity = peak = 1.0
    held = 0.0
    for t in range(len(pos)):
        out[t], cut[t] = risk_limited_position(pos[t], 1.0 - equity / peak, max_position, max_drawdown, drawdown_cut)
        net, held = bar_step(t, held, float(out[t]))
        equity *= 1.0 + net
        peak = max(peak, equity)
    return out, cut
