"""Market simulator: prices (as log returns), fills, transaction costs and slippage.

One seam of the environment: given the position held and the target chosen at the close of
bar ``t``, :class:`MarketSimulator` returns the portfolio's simple net return over the bar, the
cost paid, the notional traded and the position held at the next close, with the book of
:mod:`raytrade_envs.accounting` (units held between trades, so weights drift; rebalanced to the
target every bar, and charged for it; exact compounding across the gap)::

    1 + net = (1 + sum_a held_a * G_a) * (1 - c) * (1 + sum_a new_a * I_a)

with ``G = expm1(gap[t])``, ``I = expm1(returns[t] - gap[t])`` and ``c`` the costs of trading
from the drifted holdings to the target.

* **Fills**: with ``gap_returns`` (``ln(open[t+1] / close[t])``) the target fills at the
  *open of bar t + 1*; without, at ``close[t]`` (gap 0).
* **Transaction cost**: ``cost_bps`` basis points of traded notional.
* **Slippage**: a cost fraction ``slippage_vol_mult * volatility[t]`` of traded notional,
  i.e. proportional to the volatility known at ``t`` (e.g. the rolling std of 1-bar log
  returns); no slippage without ``volatility`` or with ``slippage_vol_mult = 0``.

* **Orders that cannot fill** (``tradable[t, a]`` False): the book keeps its units in that asset at that bar and
  trades the others (:func:`raytrade_envs.accounting.simulate` with ``tradable=``, whose kernels
  :meth:`MarketSimulator.step_tradable` and :meth:`MarketSimulator.step_batch_tradable` run, so the env and the
  backtest keep one book); the effective target of such an asset is its drifted weight.

Position limits and the long-only switch are applied to the *targets* by
:class:`raytrade_envs.actions.ActionMapper` before they reach the simulator.

The per-bar factors ``expm1(gap)``, ``expm1(returns - gap)`` and the cost rate are
precomputed once (with numpy, so they are bit-identical to :func:`accounting.simulate`);
the scalar path reads them from Python lists, the batch path gathers them by fancy indexing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raytrade_envs._validate import as_finite_array, as_float
from raytrade_envs.accounting import (  # the masked-book kernels are the accounting's own (one book)
    BPS,
    BarStep,
    BookPath,
    _after_cost_fraction,
    _intrabar,
    _step_book_masked,
    simulate,
    step_book,
    step_book_single,
)

__all__ = ["MarketSimulator", "ohlcv_arrays"]


class MarketSimulator:
    """Per-bar fills and costs for one asset or a portfolio of ``A`` assets.

    Args:
        returns: shape ``(T,)`` (one asset) or ``(T, A)``; ``returns[t] = ln(close[t+1] / close[t])``.
        gap_returns: optional, same shape as ``returns``; ``ln(open[t+1] / close[t])``. Given,
            targets fill at the next bar's open; ``None`` fills at ``close[t]``.
        volatility: optional, same shape as ``returns``, >= 0; per-bar volatility (fraction, e.g.
            std of 1-bar log returns known at ``t``) used for slippage. ``None`` = no slippage.
        cost_bps: transaction cost in basis points of traded notional, >= 0.
        slippage_vol_mult: slippage cost fraction per unit traded = ``slippage_vol_mult *
            volatility[t]``; >= 0.
        tradable: optional bool array of the shape of ``returns``; False where the order for an asset at bar
            ``t`` cannot fill (the book keeps its units there). ``None``: every order fills.

    Attributes:
        n_bars: ``T``; n_assets: ``A`` (1 for 1-D returns); single: True for 1-D returns.
        returns, gap_returns, volatility: the validated float64 arrays, shape ``(T, A)``
            (``gap_returns``/``volatility`` may be ``None``); read-only.
        tradable: ``(T, A)`` read-only bool array, or ``None`` when not given.

    Raises:
        ValueError: naming the argument for wrong shapes, non-finite values, negative
            volatility, negative/non-finite ``cost_bps`` / ``slippage_vol_mult``, or a ``tradable`` that is not
            a bool array of the shape of ``returns``.
    """

    def __init__(
        self,
        returns: Any,
        gap_returns: Any | None = None,
        volatility: Any | None = None,
        cost_bps: float = 10.0,
        slippage_vol_mult: float = 0.0,
        tradable: Any | None = None,
    ) -> None:
        rets = as_finite_array(returns, "returns", (1, 2), np.float64)
        self.single = rets.ndim == 1
        rets2 = rets.reshape(rets.shape[0], -1)
        self.n_bars, self.n_assets = rets2.shape
        self.cost_bps = as_float(cost_bps, "cost_bps", 0.0, float("inf"), high_open=True)
        self.slippage_vol_mult = as_float(slippage_vol_mult, "slippage_vol_mult", 0.0, float("inf"), high_open=True)
        gap = None
        if gap_returns is not None:
            gap = as_finite_array(gap_returns, "gap_returns", (rets.ndim,), np.float64)
            if gap.shape != rets.shape:
                raise ValueError(f"gap_returns must have the shape of returns {rets.shape}, got {gap.shape}")
            gap = gap.reshape(rets2.shape)
        vol = None
        if volatility is not None:
            vol = as_finite_array(volatility, "volatility", (rets.ndim,), np.float64)
            if vol.shape != rets.shape:
                raise ValueError(f"volatility must have the shape of returns {rets.shape}, got {vol.shape}")
            if np.any(vol < 0.0):
                bad = tuple(int(i) for i in np.argwhere(vol < 0.0)[0])
                raise ValueError(f"volatility must be >= 0, first negative value at index {bad}")
            vol = vol.reshape(rets2.shape)
        ok = None
        if tradable is not None:
            ok = np.asarray(tradable)
            if ok.dtype != np.bool_ or ok.shape != rets.shape:
                raise ValueError(f"tradable must be a bool array of the shape of returns {rets.shape}, "
                                 f"got {ok.dtype} {ok.shape}")
            ok = np.array(ok.reshape(rets2.shape), dtype=bool, order="C", copy=True)
            ok.setflags(write=False)
        self.returns = rets2
        self.gap_returns = gap
        self.volatility = vol
        self.tradable = ok
        self._build()

    # ----------------------------------------------------------- caches
    def _build(self) -> None:
        """Precompute the per-bar factors (dropped from pickles, rebuilt on load)."""
        rets, gap, vol = self.returns, self.gap_returns, self.volatility
        self.has_gap = gap is not None
        self.has_slippage = vol is not None and self.slippage_vol_mult > 0.0
        self._em_gap = np.expm1(gap) if gap is not None else np.zeros_like(rets)
        self._em_intra = np.expm1(rets - gap) if gap is not None else np.expm1(rets)
        base = self.cost_bps * BPS
        if self.has_slippage:
            self._slip = self.slippage_vol_mult * vol
            self._rate = base + self._slip
        else:
            self._slip = None
            self._rate = np.full_like(rets, base)
        for arr in (self._em_gap, self._em_intra, self._rate):
            arr.setflags(write=False)
        if self.n_assets == 1:  # the scalar hot path reads Python floats
            self._em_gap_list = self._em_gap[:, 0].tolist()
            self._em_intra_list = self._em_intra[:, 0].tolist()
            self._rate_list = self._rate[:, 0].tolist()

    def __getstate__(self) -> dict[str, Any]:
        keep = ("single", "n_bars", "n_assets", "cost_bps", "slippage_vol_mult", "returns", "gap_returns", "volatility",
                "tradable")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    # ------------------------------------------------------------ steps
    def step_single(self, t: int, held: float, new: float) -> BarStep:
        """One bar of a one-asset book with Python floats (the hot path; no validation).

        Args:
            t: bar index in ``[0, T)``; the target is chosen at the close of ``t``.
            held: position held at the close of ``t`` (fraction of equity, drifted since the last trade).
            new: target position (fraction of equity after costs).

        Returns:
            :class:`~raytrade_envs.accounting.BarStep` ``(net, cost, traded, held)``: the simple net
            return of the bar, the cost paid (fraction of equity), the notional traded and the
            position held at the close of ``t + 1``.
        """
        return step_book_single(held, new, self._em_gap_list[t], self._em_intra_list[t], self._rate_list[t])

    def step(self, t: int, held: np.ndarray, new: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """One bar of a portfolio: ``held``/``new`` of shape ``(A,)``.

        Returns:
            ``(net, cost, traded, held_next)``: floats (traded summed over assets) and the ``(A,)``
            positions held at the close of ``t + 1``.
        """
        net, cost, traded, held_next = step_book(held, new, self._em_gap[t], self._em_intra[t], self._rate[t])
        return float(net), float(cost), float(traded.sum()), held_next

    def step_batch(
        self, t: np.ndarray, held: np.ndarray, new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One bar for ``N`` independent books at once.

        Args:
            t: int array ``(N,)`` of bar indices.
            held: ``(N, A)`` positions held at the close of each ``t``.
            new: ``(N, A)`` target positions.

        Returns:
            ``(net, cost, traded, held_next)``: float64 ``(N,)``, ``(N,)``, ``(N,)`` (summed over
            assets; fractions of each book's equity) and ``(N, A)``.
        """
        net, cost, traded, held_next = step_book(held, new, self._em_gap[t], self._em_intra[t], self._rate[t])
        return net, cost, traded.sum(axis=1), held_next

    def step_tradable(
        self, t: int, held: np.ndarray, new: np.ndarray
    ) -> tuple[float, float, float, np.ndarray, np.ndarray]:
        """One bar of a portfolio (``held``/``new`` ``(A,)``) where only the assets with ``tradable[t]`` trade.

        The bar of :func:`raytrade_envs.accounting.simulate` with ``tradable=`` (its sequential kernel), for any
        ``tradable`` row, all True included; needs :attr:`tradable`.

        Returns:
            ``(net, cost, traded, held_next, target)``: floats (traded summed over assets), the ``(A,)`` positions
            held at the close of ``t + 1`` and the ``(A,)`` effective targets (``new`` where the order fills, the
            drifted holding kept, as a fraction of the equity after costs, where it cannot).
        """
        net, cost, traded, held_next, target = _step_book_masked(
            held, new, self._em_gap[t], self._em_intra[t], self._rate[t], self.tradable[t])
        return float(net), float(cost), float(traded.sum()), held_next, target

    def step_batch_tradable(
        self, t: np.ndarray, held: np.ndarray, new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`step_tradable` for ``N`` independent books at once (``t`` ``(N,)``, ``held``/``new`` ``(N, A)``).

        The same formulas as the sequential kernel, vectorised: ``x`` solves the cost equation over the tradable
        assets only (``A + 2`` Newton steps, which reach the fixed point the sequential kernel stops at), the
        untradable assets keep their units (effective target ``w / x``), trade nothing and pay nothing.

        Returns:
            ``(net (N,), cost (N,), traded (N,), held_next (N, A), target (N, A))``.
        """
        ok = self.tradable[t]
        em_gap, em_intra, rate = self._em_gap[t], self._em_intra[t], self._rate[t]
        a = (held * em_gap).sum(axis=-1)
        gg = 1.0 + a
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where((gg > 0.0)[:, None], held * (1.0 + em_gap) / gg[:, None], held)
            x = _after_cost_fraction(new, w, np.where(ok, rate, 0.0))
            target = np.where(ok, new, np.where((x > 0.0)[:, None], w / x[:, None], w))
        traded = np.where(ok, np.abs(new * x[:, None] - w), 0.0)
        cost = (rate * traded).sum(axis=-1) * gg
        b, held_next = _intrabar(target, em_intra)
        net = a + b + a * b - cost * (1.0 + b)
        return net, cost, traded.sum(axis=1), held_next, target

    def simulate(self, positions: Any, start: int, initial_position: Any = 0.0) -> BookPath:
        """A target series entered at bar ``start`` through the book (validated, via :func:`accounting.simulate`).

        Args:
            positions: ``(n,)`` for one asset or ``(n, A)``; ``positions[k]`` is the target of bar ``start + k``.
            start: first bar index.
            initial_position: position held before the first bar.

        Returns:
            :class:`~raytrade_envs.accounting.BookPath`, the same numbers the env produces (with :attr:`tradable`'s
            rows of those bars as ``simulate``'s ``tradable``).
        """
        pos = np.asarray(positions, dtype=np.float64)
        n = pos.shape[0]
        sl = slice(start, start + n)
        squeeze = (lambda a: a[:, 0]) if pos.ndim == 1 else (lambda a: a)
        return simulate(
            pos,
            squeeze(self.returns[sl]),
            self.cost_bps,
            initial_position=initial_position,
            gap_returns=None if self.gap_returns is None else squeeze(self.gap_returns[sl]),
            slippage=None if self._slip is None else squeeze(self._slip[sl]),
            tradable=None if self.tradable is None else squeeze(self.tradable[sl]),
        )

    def net_returns(self, positions: Any, start: int, initial_position: Any = 0.0) -> np.ndarray:
        """``(n,)`` simple net returns of a target series entered at bar ``start`` (``simulate(...).net``)."""
        return self.simulate(positions, start, initial_position).net


def ohlcv_arrays(open_: Any, close: Any, vol_window: int = 24) -> dict[str, np.ndarray]:
    """Returns, gap returns and causal volatility of one asset from open/close prices.

    Args:
        open_: shape ``(T,)`` opening prices (> 0).
        close: shape ``(T,)`` closing prices (> 0).
        vol_window: bars in the rolling standard deviation of 1-bar log returns (>= 2).

    Returns:
        dict of float64 arrays of shape ``(T - 1,)`` for bars ``t = 0 .. T-2`` (the last bar has
        no next bar): ``returns[t] = ln(close[t+1] / close[t])``, ``gap_returns[t] =
        ln(open[t+1] / close[t])``, and ``volatility[t]`` = sample std (ddof=1) of
        ``ln(close[s] / close[s-1])`` for ``s in (t - vol_window, t]`` (known at the close of
        ``t``; NaN for ``t < vol_window``, which callers drop).

    Raises:
        ValueError: for non-positive or non-finite prices, mismatched shapes or a bad window.
    """
    o = np.asarray(open_, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    if o.ndim != 1 or o.shape != c.shape or o.size < 2:
        raise ValueError(f"open and close must be 1-D of the same length >= 2, got {o.shape} and {c.shape}")
    if not (np.all(np.isfinite(o)) and np.all(np.isfinite(c)) and np.all(o > 0) and np.all(c > 0)):
        raise ValueError("open and close prices must be finite and > 0")
    if isinstance(vol_window, bool) or not isinstance(vol_window, (int, np.integer)) or vol_window < 2:
        raise ValueError(f"vol_window must be an int >= 2, got {vol_window!r}")
    log_c = np.log(c)
    r1 = np.full(c.shape, np.nan)
    r1[1:] = np.diff(log_c)
    vol = np.full(c.shape, np.nan)
    if c.size > vol_window:
        win = np.lib.stride_tricks.sliding_window_view(r1[1:], vol_window)
        vol[vol_window:] = win.std(axis=1, ddof=1)
    return {
        "returns": log_c[1:] - log_c[:-1],
        "gap_returns": np.log(o[1:]) - log_c[:-1],
        "volatility": vol[:-1],
    }
