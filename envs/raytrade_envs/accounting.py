"""Per-bar portfolio arithmetic shared by the RL environments and the backtester.

This module is the single definition of how target positions turn into a portfolio return.
Every consumer (``TradingEnv``, ``VecTradingEnv``, the backtester, the risk layer, reports)
goes through these formulas, so training rewards and backtest P&L agree bit for bit.

The book
--------
* **Target position** (``new``): the fraction of equity to hold in an asset after the trade,
  in ``[-1, 1]`` (negative = short), chosen at the close of bar ``t`` from information up to
  ``t``. It is a fraction of the equity *after* the trade's costs are paid, so a 100 % long
  target holds exactly the whole equity.
* **Held position** (``held``): what the book actually holds coming into a trade, as a fraction
  of equity. Between trades the book holds *units*, so weights drift with prices: a position
  ``w_a`` that earns simple return ``R_a`` while the book earns ``sum_b w_b R_b`` becomes
  ``w_a (1 + R_a) / (1 + sum_b w_b R_b)``. A 100 % long never drifts; a short, a fractional
  position or a portfolio does.
* **Rebalance every bar, and pay for it.** At every fill the book trades from its drifted
  holdings to the target, per asset, and is charged on that notional: the trade that restores
  a fractional weight after a move is a real trade, counted in costs and turnover.
* **Fills**: without gap returns the trade fills at ``close[t]``. With ``gap_return[t] =
  ln(open[t+1] / close[t])`` (``fill: next_open``) it fills at the open of ``t + 1``: the held
  position earns the gap ``close[t] -> open[t+1]``, the target earns the intrabar move
  ``open[t+1] -> close[t+1]`` (log return ``log_return[t] - gap_return[t]``).
* **Costs**: ``rate_a = cost_bps * 1e-4 + slippage_a`` per unit of traded notional in asset
  ``a`` (``slippage`` e.g. ``mult * volatility[t]``, see :class:`raytrade_envs.market.MarketSimulator`).
  With ``V`` the equity at the fill before the trade and ``x = V' / V`` the fraction left after
  costs, the trade in asset ``a`` is ``|new_a x - w_a|`` (fraction of ``V``) and ``x`` solves::

      x = 1 - sum_a rate_a * |new_a * x - w_a|

  (piecewise linear and increasing in ``x`` while ``sum_a rate_a |new_a| < 1``; solved exactly
  by Newton's method on its linear pieces, :func:`_after_cost_fraction`).

* **Orders that cannot fill** (``tradable[t, a]`` False in :func:`simulate`: the asset has no bar, or
  the strategy sends no order): the book keeps its units in that asset. Its target is replaced by
  its drifted weight at the fill, ``new_a = w_a / x`` (the same units, as a fraction of the equity
  after costs), so it trades nothing and pays nothing there, and ``x`` solves the cost equation
  over the tradable assets only; the other assets trade to their targets. :class:`BookPath`
  ``target`` reports the targets really held (the effective ones).

Per bar ``t`` (``held`` = weights at the close of ``t``, ``G_a = expm1(gap[t, a])``,
``I_a = expm1(log_return[t, a] - gap[t, a])``)::

    a   = sum_a held_a * G_a                          # the gap return of the old book
    w_a = held_a * (1 + G_a) / (1 + a)                # weights at the fill, before the trade
    c   = sum_a rate_a * |new_a * x - w_a|            # costs, fraction of the equity at the fill
    b   = sum_a new_a * I_a                           # the intrabar return of the new book
    1 + net = (1 + a) * (1 - c) * (1 + b)             # exact compounding, no first-order terms
    held'_a = new_a * (1 + I_a) / (1 + b)             # weights at the close of t + 1

so equity grows by ``(1 + prev . gap_return) (1 + new . intraday_return)`` less costs, and
buy-and-hold reproduces the instrument's own total return (first fill to last close). ``net``
is the *simple* return of equity over the bar (fraction); ``log1p(net)`` is its log return
(:func:`net_log_return`). The cost reported for a bar is ``c * (1 + a)``, a fraction of the
equity at the close of ``t``; the traded notional is ``|new_a x - w_a|`` per asset, a fraction
of the equity at the fill (turnover).

Reference: the same book with cash and units, written as a plain loop, is in
``tests/test_accounting.py`` and agrees with these formulas to 1e-9 on real data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BPS",
    "MIN_GROWTH",
    "POSITION_TOLERANCE",
    "BarStep",
    "BookPath",
    "bar_net_return",
    "bar_step",
    "net_log_return",
    "net_returns",
    "simulate",
    "step_book",
    "step_book_single",
]

#: One basis point as a fraction.
BPS: float = 1e-4

#: Absolute tolerance when checking that positions lie in [-1, 1].
POSITION_TOLERANCE: float = 1e-9

#: Floor on the growth factor ``1 + net`` before taking the log of a ruinous bar.
MIN_GROWTH: float = 1e-12

_LOG_MIN_GROWTH: float = math.log(MIN_GROWTH)


def net_log_return(net: float) -> float:
    """Net log return ``log1p(net)`` of a bar, floored at ``log(1e-12)`` when ``1 + net <= 1e-12``.

    Args:
        net: simple net return of the bar (fraction), as returned by :func:`bar_net_return`.

    Returns:
        ``log1p(net)`` if ``1 + net > 1e-12`` else ``log(1e-12)`` (about -27.6), so that a bar
        losing all equity (or more) yields a large but finite negative reward.
    """
    return math.log1p(net) if 1.0 + net > MIN_GROWTH else _LOG_MIN_GROWTH


class BarStep(NamedTuple):
    """One bar of a one-asset book (Python floats): see the module docstring for the formulas."""

    net: float  #: simple net return of equity over the bar (fraction)
    cost: float  #: costs paid, fraction of the equity at the close of t
    traded: float  #: traded notional, fraction of the equity at the fill
    held: float  #: the position held at the close of t + 1 (drifted target), fraction of equity


# --------------------------------------------------------------------------- the core, one bar


def step_book_single(held: float, new: float, em_gap: float, em_intra: float, rate: float) -> BarStep:
    """One bar of a one-asset book from precomputed factors (the env's hot path; no validation).

    Args:
        held: position held at the close of ``t`` (fraction of equity, drifted since the last trade).
        new: target position after the trade (fraction of the equity after costs).
        em_gap: ``expm1(gap_return[t])`` (``0.0`` for a fill at the close).
        em_intra: ``expm1(log_return[t] - gap_return[t])``.
        rate: cost per unit of traded notional (``cost_bps * 1e-4 + slippage``), fraction.

    Returns:
        :class:`BarStep`; the same arithmetic, operation for operation, as :func:`step_book`
        with ``A = 1``, so both give bit-identical results.
    """
    a = held * em_gap
    gg = 1.0 + a
    w = held * (1.0 + em_gap) / gg if gg > 0.0 else held
    rw = rate * w
    rn = rate * new
    x = 1.0
    for _ in range(3):  # A + 2 Newton steps on the piecewise-linear cost equation (exact; see _after_cost_fraction)
        s = 1.0 if new * x - w >= 0.0 else -1.0
        x = (1.0 + s * rw) / (1.0 + s * rn)
    traded = abs(new * x - w)
    cost = rate * traded * gg
    b = new * em_intra
    ig = 1.0 + b
    net = a + b + a * b - cost * ig
    held_next = new * (1.0 + em_intra) / ig if ig > 0.0 else new
    return BarStep(net, cost, traded, held_next)


def _after_cost_fraction(new: np.ndarray, w: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Solve ``x = 1 - sum_a rate_a |new_a x - w_a|`` over the last axis; shapes ``(..., A)`` -> ``(...)``.

    ``f(x) = x - 1 + sum_a rate_a |new_a x - w_a|`` is convex, piecewise linear with at most ``A``
    kinks and increasing while ``sum_a rate_a |new_a| < 1``; ``f(1) >= 0``, so Newton's method from
    ``x = 1`` moves monotonically down onto the root's linear piece and lands on the root after at
    most ``A + 1`` steps. A fixed ``A + 2`` steps keep every path (scalar, vector, batch) identical.
    """
    rw = rate * w
    rn = rate * new
    x = np.ones(new.shape[:-1])
    for _ in range(new.shape[-1] + 2):
        s = np.where(new * x[..., None] - w >= 0.0, 1.0, -1.0)
        x = (1.0 + (s * rw).sum(axis=-1)) / (1.0 + (s * rn).sum(axis=-1))
    return x


def _intrabar(new: np.ndarray, em_intra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The new book's intrabar return ``b = sum_a new_a * I_a`` ``(...)`` and the positions it holds at the close,
    ``new * (1 + I) / (1 + b)`` ``(..., A)`` (``new`` itself after a ruinous bar, ``1 + b <= 0``). Costs do not enter:
    they scale the whole book, not its weights."""
    b = (new * em_intra).sum(axis=-1)
    ig = 1.0 + b
    with np.errstate(divide="ignore", invalid="ignore"):
        return b, np.where((ig > 0.0)[..., None], new * (1.0 + em_intra) / ig[..., None], new)


def step_book(
    held: np.ndarray, new: np.ndarray, em_gap: np.ndarray, em_intra: np.ndarray, rate: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One bar of ``N`` books of ``A`` assets at once (no validation).

    Args:
        held: ``(..., A)`` positions held at the close of ``t`` (fractions of equity).
        new: ``(..., A)`` target positions (fractions of the equity after costs).
        em_gap, em_intra, rate: ``(..., A)`` (or broadcastable) ``expm1(gap)``, ``expm1(intrabar
            log return)`` and the cost rate per unit traded.

    Returns:
        ``(net (...), cost (...), traded (..., A), held_next (..., A))`` as in the module docstring.
    """
    a = (held * em_gap).sum(axis=-1)
    gg = 1.0 + a
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((gg > 0.0)[..., None], held * (1.0 + em_gap) / gg[..., None], held)
    x = _after_cost_fraction(new, w, rate)
    traded = np.abs(new * x[..., None] - w)
    cost = (rate * traded).sum(axis=-1) * gg
    b, held_next = _intrabar(new, em_intra)
    net = a + b + a * b - cost * (1.0 + b)
    return net, cost, traded, held_next


def bar_step(
    held: float,
    new: float,
    log_return: float,
    cost_bps: float,
    gap_return: float = 0.0,
    slippage: float = 0.0,
) -> BarStep:
    """One bar of a one-asset book from log returns (the risk layer's and tests' scalar path).

    Args:
        held: position held at the close of bar ``t`` (fraction of equity; after a previous bar, the
            ``held`` of that bar's :class:`BarStep`).
        new: target position in ``[-1, 1]`` chosen at the close of ``t`` (fraction of the equity after costs).
        log_return: ``ln(close[t+1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional (``10.0`` = 0.1 %).
        gap_return: ``ln(open[t+1] / close[t])`` when the trade fills at the next open; ``0.0`` fills at
            ``close[t]``.
        slippage: extra cost as a fraction of traded notional (e.g. ``mult * volatility[t]``).

    Returns:
        :class:`BarStep` ``(net, cost, traded, held)``, bit-identical to :func:`simulate` on the same bar.
    """
    em_gap = float(np.expm1(gap_return)) if gap_return != 0.0 else 0.0
    em_intra = float(np.expm1(log_return - gap_return))
    return step_book_single(held, new, em_gap, em_intra, cost_bps * BPS + slippage)


def bar_net_return(
    held: float,
    new: float,
    log_return: float,
    cost_bps: float,
    gap_return: float = 0.0,
    slippage: float = 0.0,
) -> float:
    """Simple net return of a one-asset book over one bar: ``bar_step(...).net`` (see :func:`bar_step`)."""
    return bar_step(held, new, log_return, cost_bps, gap_return, slippage).net


# --------------------------------------------------------------------------- a series of bars


@dataclass(frozen=True)
class BookPath:
    """A position series run through the book (arrays are fresh float64).

    Attributes:
        net: ``(T,)`` simple net return of each bar (fractions).
        cost: ``(T,)`` costs paid in each bar, fraction of the equity at the bar's start.
        traded: ``(T,)`` or ``(T, A)`` traded notional per asset, fraction of the equity at the fill.
        held: ``(T,)`` or ``(T, A)`` position held coming into each bar's trade (drifted), fractions.
        held_end: ``()`` or ``(A,)`` position held at the close of the last bar.
        target: ``(T,)`` or ``(T, A)`` effective target of each bar's trade (fraction of the equity after
            costs): the position asked for where the order fills, the drifted holding kept (``w / x``)
            where it cannot (``tradable`` False).
    """

    net: np.ndarray
    cost: np.ndarray
    traded: np.ndarray
    held: np.ndarray
    held_end: np.ndarray
    target: np.ndarray

    @property
    def turnover(self) -> np.ndarray:
        """``(T,)`` traded notional per bar summed over assets (fraction of equity)."""
        return self.traded if self.traded.ndim == 1 else self.traded.sum(axis=1)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def _step_book_masked(
    held: np.ndarray, new: np.ndarray, em_gap: np.ndarray, em_intra: np.ndarray, rate: np.ndarray, ok: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """One bar of one book ``(A,)`` where only the assets with ``ok`` trade (no validation).

    As :func:`step_book`, with ``x`` solved over the tradable assets and the effective target ``w / x`` (the units
    kept) for the others. Newton's method stops once its sign pattern repeats (``x`` is then a fixed point, the
    same number the fixed ``A + 2`` steps reach). Returns ``(net, cost, traded (A,), held_next (A,), target (A,))``.
    """
    a = float((held * em_gap).sum())
    gg = 1.0 + a
    w = held * (1.0 + em_gap) / gg if gg > 0.0 else held
    r_ok = np.where(ok, rate, 0.0)
    rw = r_ok * w
    rn = r_ok * new
    x = 1.0
    s_prev = None
    for _ in range(new.shape[-1] + 2):
        s = new * x - w >= 0.0
        if s_prev is not None and np.array_equal(s, s_prev):
            break
        sign = np.where(s, 1.0, -1.0)
        x = float((1.0 + (sign * rw).sum()) / (1.0 + (sign * rn).sum()))
        s_prev = s
    target = np.where(ok, new, w / x if x > 0.0 else w)
    traded = np.where(ok, np.abs(new * x - w), 0.0)
    cost = float((rate * traded).sum()) * gg
    b, held_next = _intrabar(target, em_intra)
    b = float(b)
    net = a + b + a * b - cost * (1.0 + b)
    return net, cost, traded, held_next, target


def simulate(
    positions: Any,
    log_returns: Any,
    cost_bps: float,
    initial_position: Any = 0.0,
    gap_returns: Any | None = None,
    slippage: Any | None = None,
    tradable: Any | None = None,
) -> BookPath:
    """Run a series of target positions through the book, one asset or a portfolio.

    Args:
        positions: ``(T,)`` (one asset) or ``(T, A)`` target positions in ``[-1, 1]``;
            ``positions[t]`` is chosen at the close of bar ``t`` and traded at its fill.
        log_returns: same shape; ``ln(close[t+1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional (>= 0).
        initial_position: position held before the first bar (scalar, or ``(A,)``).
        gap_returns: optional, same shape; ``ln(open[t+1] / close[t])``: fills at the next open.
        slippage: optional scalar or same shape; extra cost fraction of traded notional (>= 0).
        tradable: optional bool array of the same shape; ``False`` where the order for that asset cannot
            fill at that bar (no bar, or no order): the book keeps its units there (its ``positions`` entry
            is ignored, though still validated) and trades the others (module docstring, "Orders that cannot
            fill"). None or all True: every order fills (the vectorised path, bit-identical to no mask);
            otherwise the bars run one by one (about 0.2 s for 5000 bars of 30 assets).

    Returns:
        :class:`BookPath`, equal bar for bar to stepping :class:`raytrade_envs.TradingEnv` (or
        :func:`bar_step`) with the same targets.

    Raises:
        ValueError: positions not 1-D/2-D, shapes that differ, non-finite values, a position outside
            ``[-1, 1]`` (tolerance 1e-9), a negative or non-finite ``cost_bps``, negative slippage, a
            ``tradable`` that is not a bool array of the positions' shape, or a cost rate so high that
            ``sum_a rate_a |position_a| >= 1`` over the tradable assets (costs would exceed the trade).
    """
    pos = np.asarray(positions, dtype=np.float64)
    lr = np.asarray(log_returns, dtype=np.float64)
    if pos.ndim not in (1, 2):
        raise ValueError(f"positions must be 1-D (T,) or 2-D (T, A), got shape {pos.shape}")
    if lr.ndim != pos.ndim:
        raise ValueError(
            f"log_returns must have the same shape as positions {pos.shape}, got shape {lr.shape}"
        )
    if pos.shape != lr.shape:
        raise ValueError(
            f"positions and log_returns must have the same shape, got {pos.shape} and {lr.shape}"
        )
    _check_finite(pos, "positions")
    _check_finite(lr, "log_returns")
    cost = float(cost_bps)
    if not math.isfinite(cost) or cost < 0.0:
        raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps!r}")
    init = np.asarray(initial_position, dtype=np.float64)
    if init.ndim > 1 or (init.ndim == 1 and (pos.ndim != 2 or init.shape != pos.shape[1:])):
        raise ValueError(
            f"initial_position must be a scalar or have shape {pos.shape[1:]}, got shape {init.shape}"
        )
    if not np.all(np.isfinite(init)) or np.any(np.abs(init) > 1.0 + POSITION_TOLERANCE):
        raise ValueError(f"initial_position must be finite and in [-1, 1], got {initial_position!r}")
    if pos.size and np.max(np.abs(pos)) > 1.0 + POSITION_TOLERANCE:
        bad = np.unravel_index(int(np.argmax(np.abs(pos) > 1.0 + POSITION_TOLERANCE)), pos.shape)
        idx = bad[0] if pos.ndim == 1 else tuple(int(i) for i in bad)
        raise ValueError(f"positions must lie in [-1, 1]; positions[{idx}] = {pos[bad]!r}")
    gap = None
    if gap_returns is not None:
        gap = np.asarray(gap_returns, dtype=np.float64)
        if gap.shape != lr.shape:
            raise ValueError(f"gap_returns must have shape {lr.shape}, got {gap.shape}")
        _check_finite(gap, "gap_returns")
    rate = np.full(lr.shape, cost * BPS)
    if slippage is not None:
        slip = np.asarray(slippage, dtype=np.float64)
        if slip.ndim and slip.shape != lr.shape:
            raise ValueError(f"slippage must be a scalar or have shape {lr.shape}, got {slip.shape}")
        _check_finite(slip, "slippage")
        if np.any(slip < 0.0):
            raise ValueError("slippage must be >= 0 (a cost fraction of traded notional)")
        rate = rate + slip
    mask = None
    if tradable is not None:
        mask = np.asarray(tradable)
        if mask.dtype != np.bool_ or mask.shape != pos.shape:
            raise ValueError(f"tradable must be a bool array of shape {pos.shape}, got {mask.dtype} {mask.shape}")
        if mask.all():
            mask = None

    single = pos.ndim == 1
    two = (lambda a: a[:, None]) if single else (lambda a: a)
    p2, r2 = two(pos), two(rate)
    em_gap = np.zeros_like(p2) if gap is None else np.expm1(two(gap))
    em_intra = np.expm1(two(lr) if gap is None else two(lr - gap))
    load = r2 * np.abs(p2) if mask is None else np.where(two(mask), r2 * np.abs(p2), 0.0)
    heavy = load.sum(axis=1) >= 1.0
    if heavy.any():
        t = int(np.flatnonzero(heavy)[0])
        raise ValueError(f"cost rate too high at bar {t}: sum of rate * |position| = "
                         f"{float(load[t].sum())} >= 1 (costs would exceed the trade)")
    one = (lambda a: a[:, 0]) if single else (lambda a: a)
    if mask is not None:
        return _simulate_masked(p2, em_gap, em_intra, r2, two(mask), init, one, single)
    # The held positions depend on the previous bar's target and move only, not on costs: all bars at once.
    n_assets = p2.shape[1]
    held = np.empty_like(p2)
    if len(p2):
        held[0] = np.broadcast_to(init, (n_assets,))
        held[1:] = _intrabar(p2[:-1], em_intra[:-1])[1]
    net, cost_paid, traded, held_next = step_book(held, p2, em_gap, em_intra, r2)
    end = held_next[-1] if len(p2) else np.broadcast_to(init, (n_assets,)).copy()
    return BookPath(net=net, cost=cost_paid, traded=one(traded), held=one(held),
                    held_end=end[0] if single else end, target=one(p2.copy()))


def _simulate_masked(p2: np.ndarray, em_gap: np.ndarray, em_intra: np.ndarray, r2: np.ndarray, ok: np.ndarray,
                     init: np.ndarray, one: Any, single: bool) -> BookPath:
    """:func:`simulate`'s sequential path: bar by bar with :func:`_step_book_masked`, all arrays ``(T, A)``."""
    n_bars, n_assets = p2.shape
    net = np.empty(n_bars)
    cost = np.empty(n_bars)
    traded = np.empty_like(p2)
    held = np.empty_like(p2)
    target = np.empty_like(p2)
    h = np.broadcast_to(init, (n_assets,)).astype(np.float64)
    for t in range(n_bars):
        held[t] = h
        net[t], cost[t], traded[t], h, target[t] = _step_book_masked(h, p2[t], em_gap[t], em_intra[t], r2[t], ok[t])
    return BookPath(net=net, cost=cost, traded=one(traded), held=one(held), held_end=h[0] if single else h,
                    target=one(target))


def net_returns(
    positions: Any,
    log_returns: Any,
    cost_bps: float,
    initial_position: Any = 0.0,
    gap_returns: Any | None = None,
    slippage: Any | None = None,
) -> np.ndarray:
    """``(T,)`` simple net returns (fractions) of a target-position series: ``simulate(...).net``.

    Arguments, shapes and errors as :func:`simulate`.
    """
    return simulate(positions, log_returns, cost_bps, initial_position, gap_returns, slippage).net
