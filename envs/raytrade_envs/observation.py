"""Observation builder: feature window, forecaster outputs, positions and account state.

The observation at bar ``t`` is a flat float32 vector, laid out as (see :func:`observation_vector`,
the single definition of the layout)::

    [ features[t - window + 1], ..., features[t]   # window * F values, oldest row first (row-major ravel)
      forecasts[t]                                 # K values (probabilities, expected return,
                                                   #   uncertainty, embedding ...); absent when K = 0
      positions                                    # A values: position held per asset (fraction of equity)
      unrealised_pnl, drawdown ]                   # 2 values, only with account=True

Nothing at an index ``> t`` is read. ``unrealised_pnl`` and ``drawdown`` are fractions (see
:class:`raytrade_envs.trading_env.TradingEnv` for their exact definitions).

Portfolio layout
----------------
A portfolio of ``A`` assets with ``F_asset`` features and ``K_asset`` forecaster outputs per asset passes its
per-asset columns **asset-major**: ``features[t] = [f(asset 0), f(asset 1), ..., f(asset A-1)]`` with
``F = A * F_asset`` (column ``a * F_asset + j`` is feature ``j`` of asset ``a``), ``forecasts[t]`` the same with
``K = A * K_asset``. The observation is then, with the layout above::

    [ for each of the window's bars, oldest first: for each asset: its F_asset features
      for each asset: its K_asset forecaster outputs at t
      positions held per asset (A, the current weights, drifted since the last trade)
      unrealised_pnl, drawdown ]

so ``obs[features_slice].reshape(window, A, F_asset)`` and ``obs[forecasts_slice].reshape(A, K_asset)`` recover
the per-asset blocks. An asset without data at ``t`` (not listed yet, warming up) has zeros there and should be
marked not tradable. ``raytrade.rl.portfolio_inputs`` builds these arrays from a universe.

:class:`ObservationBuilder` produces that vector for an environment from its stored arrays. When
the table fits in ``cache_max_bytes`` it precomputes the static part (window + forecasts) of every
bar once, so a step is one row copy plus ``A + 2`` scalar writes, and a batch of ``N`` envs is one
fancy-indexed gather.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_CACHE_MAX_BYTES", "ObservationBuilder", "observation_size", "observation_vector"]

#: Largest precomputed observation table (bytes) an :class:`ObservationBuilder` builds by default.
DEFAULT_CACHE_MAX_BYTES: int = 256 * 2**20


def observation_size(window: int, n_features: int, n_forecasts: int, n_assets: int, account: bool = True) -> int:
    """Length of the observation vector: ``window * F + K + A + (2 if account else 0)``."""
    return window * n_features + n_forecasts + n_assets + (2 if account else 0)


def observation_vector(
    feature_rows: Any,
    forecast_row: Any | None,
    positions: Any,
    unrealised_pnl: float = 0.0,
    drawdown: float = 0.0,
    account: bool = True,
) -> np.ndarray:
    """Build one observation with the environment's layout (for serving and tests).

    Args:
        feature_rows: shape ``(window, F)``, the scaled feature rows of bars ``t - window + 1 .. t``,
            oldest first (the same columns, scaling and window the agent was trained with).
        forecast_row: shape ``(K,)`` forecaster outputs at ``t``, or ``None`` when the env had no
            forecasts.
        positions: the current position, a float (one asset) or shape ``(A,)`` (fractions of equity).
        unrealised_pnl: P&L of the open position since it was opened, fraction of equity.
        drawdown: ``1 - equity / running peak`` (fraction, >= 0).
        account: include ``unrealised_pnl`` and ``drawdown`` (the env's ``account_observation``).

    Returns:
        float32 array of shape ``(window * F + K + A + 2 * account,)``:
        ``[feature_rows.ravel(), forecast_row, positions, unrealised_pnl, drawdown]``.

    Raises:
        ValueError: if ``feature_rows`` is not 2-D, ``forecast_row``/``positions`` are not 1-D
            (after promoting a scalar position), or any value is non-finite.
    """
    rows = np.asarray(feature_rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"feature_rows must have shape (window, F), got shape {rows.shape}")
    parts = [rows.reshape(-1)]
    if forecast_row is not None:
        fc = np.asarray(forecast_row, dtype=np.float32)
        if fc.ndim != 1:
            raise ValueError(f"forecast_row must have shape (K,), got shape {fc.shape}")
        parts.append(fc)
    pos = np.atleast_1d(np.asarray(positions, dtype=np.float32))
    if pos.ndim != 1:
        raise ValueError(f"positions must be a float or have shape (A,), got shape {pos.shape}")
    parts.append(pos)
    if account:
        parts.append(np.array([unrealised_pnl, drawdown], dtype=np.float32))
    out = np.concatenate(parts)
    if not np.all(np.isfinite(out)):
        raise ValueError("observation contains non-finite values (NaN or inf)")
    return out


class ObservationBuilder:
    """Builds the env observations for bar indices ``t >= window - 1``.

    Args:
        features: float32 ``(T, F)``, read-only (validated by the env).
        forecasts: float32 ``(T, K)`` or ``None``.
        window: feature rows per observation (>= 1).
        n_assets: ``A``, number of position entries.
        account: append unrealised P&L and drawdown.
        cache_max_bytes: precompute the ``(T, dim)`` float32 table of static parts when it takes
            at most this many bytes; otherwise windows are copied from ``features`` per call.

    Attributes:
        dim: observation length; ``features_slice``, ``forecasts_slice``, ``positions_slice``:
        where each part lies; ``pnl_index``/``drawdown_index``: indices of the account values
        (``None`` without ``account``).
    """

    def __init__(
        self,
        features: np.ndarray,
        forecasts: np.ndarray | None,
        window: int,
        n_assets: int,
        account: bool = True,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        self.features = features
        self.forecasts = forecasts
        self.window = int(window)
        self.n_assets = int(n_assets)
        self.account = bool(account)
        self.cache_max_bytes = int(cache_max_bytes)
        n_bars, n_features = features.shape
        self.n_bars = n_bars
        self.n_features = n_features
        self.n_forecasts = 0 if forecasts is None else forecasts.shape[1]
        self.dim = observation_size(self.window, n_features, self.n_forecasts, self.n_assets, self.account)
        nw = self.window * n_features
        self.features_slice = slice(0, nw)
        self.forecasts_slice = slice(nw, nw + self.n_forecasts)
        p0 = nw + self.n_forecasts
        self.positions_slice = slice(p0, p0 + self.n_assets)
        self.pnl_index = p0 + self.n_assets if self.account else None
        self.drawdown_index = p0 + self.n_assets + 1 if self.account else None
        self._build()

    def layout(self) -> dict[str, Any]:
        """Where each part of the observation lies: slices and indices into the vector."""
        return {
            "features": self.features_slice,
            "forecasts": self.forecasts_slice,
            "positions": self.positions_slice,
            "unrealised_pnl": self.pnl_index,
            "drawdown": self.drawdown_index,
            "dim": self.dim,
        }

    # ----------------------------------------------------------- caches
    def _build(self) -> None:
        w, nf = self.window, self.n_features
        self._flat = self.features.reshape(-1)
        self._win_offsets = np.arange(w * nf) - (w - 1) * nf  # flat index of the window relative to t*F
        self._p0 = self.positions_slice.start
        table = None
        if self.n_bars * self.dim * 4 <= self.cache_max_bytes:
            table = np.zeros((self.n_bars, self.dim), dtype=np.float32)
            win = np.lib.stride_tricks.sliding_window_view(self.features, w, axis=0)  # (T-w+1, F, w)
            table[w - 1 :, self.features_slice] = win.transpose(0, 2, 1).reshape(-1, w * nf)
            if self.forecasts is not None:
                table[:, self.forecasts_slice] = self.forecasts
            table.setflags(write=False)
        self._table = table

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_table", "_flat", "_win_offsets"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    # ---------------------------------------------------------- builders
    def _static(self, t: int) -> np.ndarray:
        """A fresh ``(dim,)`` float32 array with the window and forecasts of bar ``t`` filled in."""
        if self._table is not None:
            return self._table[t].copy()
        obs = np.zeros(self.dim, dtype=np.float32)
        nf = self.n_features
        obs[self.features_slice] = self._flat[(t - self.window + 1) * nf : (t + 1) * nf]
        if self.forecasts is not None:
            obs[self.forecasts_slice] = self.forecasts[t]
        return obs

    def build_single(self, t: int, position: float, unrealised_pnl: float, drawdown: float) -> np.ndarray:
        """Observation of a one-asset env at bar ``t`` (hot path: Python floats, no validation)."""
        obs = self._table[t].copy() if self._table is not None else self._static(t)
        p0 = self._p0
        obs[p0] = position
        if self.account:
            obs[p0 + 1] = unrealised_pnl
            obs[p0 + 2] = drawdown
        return obs

    def build(self, t: int, positions: np.ndarray, unrealised_pnl: float, drawdown: float) -> np.ndarray:
        """Observation at bar ``t`` with ``positions`` of shape ``(A,)``; a fresh float32 array."""
        obs = self._static(t)
        obs[self.positions_slice] = positions
        if self.account:
            obs[self.pnl_index] = unrealised_pnl
            obs[self.drawdown_index] = drawdown
        return obs

    def build_batch(
        self, t: np.ndarray, positions: np.ndarray, unrealised_pnl: np.ndarray, drawdown: np.ndarray
    ) -> np.ndarray:
        """Observations ``(N, dim)`` float32 for bar indices ``t`` ``(N,)`` and positions ``(N, A)``."""
        if self._table is not None:
            obs = self._table[t]  # fancy indexing: a fresh array
        else:
            obs = np.zeros((t.shape[0], self.dim), dtype=np.float32)
            obs[:, self.features_slice] = self._flat[t[:, None] * self.n_features + self._win_offsets]
            if self.forecasts is not None:
                obs[:, self.forecasts_slice] = self.forecasts[t]
        obs[:, self.positions_slice] = positions
        if self.account:
            obs[:, self.pnl_index] = unrealised_pnl
            obs[:, self.drawdown_index] = drawdown
        return obs
