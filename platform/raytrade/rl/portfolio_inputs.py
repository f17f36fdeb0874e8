"""Portfolio-env inputs of a universe run (the sibling of :mod:`raytrade.rl.env_inputs` for one asset), and the
target weights of trained portfolio agents.

:func:`portfolio_data` builds, per split (``train``/``val``/``test``), the arrays of a
:class:`raytrade_envs.TradingEnv` over the universe's union calendar (:class:`raytrade.data.universe.Panel`):

* **bars**: the calendar rows from the split's first forecaster window to its last one (every row in between, as
  :func:`raytrade.stages.portfolio.portfolio_stage` chooses its decision bars), preceded by ``rl.window - 1``
  history rows (the env's first observation needs a full feature window, so its first decision is the split's first
  decision bar) and followed by one row (the env stops there: its return is never traded). Env row ``k`` is
  calendar row ``rows[k]``; decisions are made at env rows ``window - 1 .. n - 2`` (:attr:`PortfolioData.decisions`).
* ``features`` ``(n, A * F_asset)`` float32, asset-major (:mod:`raytrade_envs.observation`, "Portfolio layout"):
  the ``rl.features`` columns of each asset's feature row at ``t``, scaled with the bundle's scaler (train-only
  statistics); 0 where the asset has no feature row (not listed yet, still in its feature warm-up, no bar).
* ``forecasts`` ``(n, A * K_asset)`` float32, asset-major: :func:`raytrade.rl.inputs.forecast_inputs` of
  :func:`raytrade.rl.inputs.agent_outputs` on the split's windows (the bundle's outputs at the window's last bar
  ``t``); 0 where the asset has no window at ``t``.
* ``returns`` ``(n, A)``: :meth:`Panel.next_log_returns` (``ln(mark[t+1] / mark[t])``, 0 where the asset has no
  mark); ``gap_returns`` ``(n, A)``: :meth:`Panel.next_gap_returns` (used when ``rl.fill == "next_open"``); on the
  last env row, which is never traded, a return the calendar does not have yet (its last row) is 0.
* ``volatility`` ``(n, A)``: :func:`slippage_volatility` (std of the last :data:`VOL_WINDOW` one-bar log returns known
  at ``t``, the portfolio stage's slippage volatility), used when ``rl.slippage_vol_mult > 0``.
* ``tradable`` ``(n, A)`` bool: :meth:`Panel.fillable` for ``rl.fill`` and the asset has a feature row at ``t``
  (the portfolio stage's mask): elsewhere the book keeps the asset's units.

:func:`portfolio_env_kwargs` turns one split into env keyword arguments with ``weight_limits`` from
``cfg.portfolio`` (the action -> weights mapping is ``project_weights(clip(action, -1, 1), **limits)``);
:func:`portfolio_agent_weights` rolls trained policies through the TEST env and returns their target weights, which
:func:`raytrade.evaluation.portfolio.portfolio_backtest` turns back into the env's equity with
:func:`backtest_inputs` (same returns, gaps, slippage and ``tradable``).

No look-ahead: the features, forecasts and mask of env row ``t`` use bars ``<= t`` of every asset only; returns at
``t`` are the NEXT bar's (what the target chosen at ``t`` earns), never an observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig, PortfolioConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.errors import ConfigError, InsufficientDataError
from raytrade.rl.env_inputs import env_kwargs
from raytrade.rl.inputs import agent_outputs, forecast_inputs
from raytrade.rl.portfolio_decision import past_log_returns

if TYPE_CHECKING:
    from raytrade.data.universe import Panel, Universe
    from raytrade.dataset.prepare import PreparedData
    from raytrade.dataset.windows import Windows
    from raytrade.features.scaler import FeatureScaler
    from raytrade.models.bundle import ForecasterBundle
    from raytrade.rl.policy import Policy

__all__ = ["VOL_WINDOW", "PortfolioData", "backtest_inputs", "calendar_arrays", "portfolio_agent_weights",
           "portfolio_data", "portfolio_env_kwargs", "portfolio_rollout", "slippage_volatility", "weight_limits"]

#: bars of the slippage volatility (the one-asset env's ``ohlcv_arrays`` default too)
VOL_WINDOW = 24
SPLITS = ("train", "val", "test")


@dataclass
class PortfolioData:
    """Portfolio-env inputs per split (module docstring).

    Attributes:
        arrays: split -> ``features`` (n, A * F_asset) float32, ``forecasts`` (n, A * K_asset) float32,
            ``returns`` / ``gap_returns`` / ``volatility`` (n, A) float64, ``tradable`` (n, A) bool.
        rows: split -> (n,) the calendar rows of the env's bars.
        timestamps: split -> (n,) the bars' timestamps (UTC).
        window: ``rl.window``; the env decides at rows ``window - 1 .. n - 2`` (:attr:`decisions`).
        symbols: the ``A`` assets, in column order.
        asset_features: the ``F_asset`` ``rl.features`` columns of each asset, in order.
        feature_names: the ``A * F_asset`` observation columns, asset-major, named ``"<symbol>/<feature>"`` (saved
            with each policy, :func:`raytrade.rl.agents.policy_meta`).
        n_forecast_inputs: ``K_asset``, forecaster columns per asset.
        forecasts: split -> the raw :func:`~raytrade.rl.inputs.agent_outputs` of the split's windows.
    """

    arrays: dict[str, dict[str, np.ndarray]]
    rows: dict[str, np.ndarray]
    timestamps: dict[str, pd.DatetimeIndex]
    window: int
    symbols: tuple[str, ...]
    asset_features: list[str]
    feature_names: list[str]
    n_forecast_inputs: int
    forecasts: dict[str, dict[str, np.ndarray]]

    def decisions(self, split: str) -> np.ndarray:
        """``(m,)`` calendar rows at which the env of ``split`` decides (env rows ``window - 1 .. n - 2``)."""
        return self.rows[split][self.window - 1 : -1]


def weight_limits(portfolio: PortfolioConfig) -> dict[str, Any]:
    """The env's ``weight_limits`` from ``cfg.portfolio``: ``long_only``, ``max_weight``, ``max_gross``,
    ``max_net`` (the keyword arguments of :func:`raytrade_envs.actions.project_weights`)."""
    return {"long_only": portfolio.long_only, "max_weight": portfolio.max_weight, "max_gross": portfolio.max_gross,
            "max_net": portfolio.max_net}


def slippage_volatility(panel: Panel) -> np.ndarray:
    """``(T, A)`` per-bar volatility known at the close of ``t`` for slippage: the population std (ddof 0) of the
    last :data:`VOL_WINDOW` one-bar log returns ``ln(close[t] / close[t-1])`` (at least 2 of them), 0 where there
    are fewer; the portfolio stage's definition (its slippage is ``rl.slippage_vol_mult`` times this)."""
    past = past_log_returns(panel.close)
    vol = pd.DataFrame(past).rolling(VOL_WINDOW, min_periods=2).std(ddof=0).to_numpy()
    return np.nan_to_num(vol)


def _asset_features(cfg: PipelineConfig, prepared: PreparedData) -> list[str]:
    names = list(cfg.rl.features) or list(prepared.feature_columns)
    unknown = [n for n in names if n not in prepared.feature_columns]
    if unknown:
        raise ConfigError(f"rl.features: unknown feature(s) {unknown}; see docs/FEATURES.md")
    return names


def _cells(panel: Panel, timestamps: Any, symbols: Any) -> tuple[np.ndarray, np.ndarray]:
    """Calendar rows and asset columns of long (timestamp, symbol) pairs."""
    rows = panel.timestamps.get_indexer(pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)))
    column = {s: k for k, s in enumerate(panel.symbols)}
    cols = np.fromiter((column.get(str(s), -1) for s in symbols), dtype=np.int64, count=len(rows))
    if (rows < 0).any() or (cols < 0).any():
        bad = int(np.flatnonzero((rows < 0) | (cols < 0))[0])
        raise ConfigError(f"row of {symbols[bad]} at {pd.Timestamp(timestamps[bad]).isoformat()} is not on the "
                          "universe's calendar: the prepared data and the universe differ")
    return rows, cols


def calendar_arrays(cfg: PipelineConfig, panel: Panel, frame: pd.DataFrame, scaler: FeatureScaler,
                    names: list[str]) -> dict[str, np.ndarray]:
    """The forecaster-free portfolio-env arrays of EVERY calendar row (module docstring), ``T`` = calendar rows:
    ``features`` ``(T, A * F_asset)`` float32 (the ``names`` columns of each asset's feature row scaled with
    ``scaler``, 0 where the asset has none), ``returns`` / ``gap_returns`` / ``volatility`` ``(T, A)`` float64
    (``returns`` and ``gap_returns`` NaN on the last row, which has no next bar) and ``tradable`` ``(T, A)`` bool
    (fillable for ``rl.fill`` and with a feature row), plus ``has_row`` ``(T, A)`` bool.

    Args:
        frame: every symbol's feature rows (``timestamp``, ``symbol`` and the scaler's columns).
        scaler: fitted on training rows only (the caller's split).

    Raises:
        ConfigError: a row of ``frame`` is not on the panel's calendar.
    """
    n_cal, n_assets = panel.shape
    scaled = scaler.transform(frame[[TIMESTAMP, SYMBOL, *scaler.columns]])
    f_rows, f_cols = _cells(panel, frame[TIMESTAMP].to_numpy(), frame[SYMBOL].to_numpy())
    feats = np.zeros((n_cal, n_assets, len(names)), dtype=np.float32)
    feats[f_rows, f_cols] = scaled[names].to_numpy(dtype=np.float32)
    has_row = np.zeros((n_cal, n_assets), dtype=bool)
    has_row[f_rows, f_cols] = True
    vol = slippage_volatility(panel) if cfg.rl.slippage_vol_mult > 0 else np.zeros((n_cal, n_assets))
    return {"features": feats.reshape(n_cal, -1), "returns": panel.next_log_returns(),
            "gap_returns": panel.next_gap_returns(), "volatility": vol,
            "tradable": panel.fillable(cfg.rl.fill) & has_row, "has_row": has_row}


def portfolio_data(cfg: PipelineConfig, universe: Universe, prepared: PreparedData, bundle: ForecasterBundle,
                   windows: Mapping[str, Windows]) -> PortfolioData:
    """The portfolio env's inputs of every split (module docstring) from ``bundle``'s outputs on ``windows``.

    Args:
        universe: the run's universe (its panel's calendar and symbols).
        prepared: the universe's prepared data (``prepared.features.frame``: every symbol's feature rows).
        bundle: the pooled forecaster; its scaler scales the features, its outputs become the forecast columns.
        windows: split -> the forecaster's windows scaled with the bundle's scaler
            (:func:`raytrade.rl.env_inputs.bundle_windows`, or the ``ForecasterRun``'s own).

    Raises:
        ConfigError: an ``rl.features`` name is not a feature column; ``uncertainty`` without MC dropout; a row of
            the prepared data is not on the universe's calendar.
        InsufficientDataError: a split has no window, or its bars cannot hold one env step (``window + 1`` bars).
    """
    panel = universe.panel
    n_cal, n_assets = panel.shape
    names = _asset_features(cfg, prepared)
    window = cfg.rl.window
    cal = calendar_arrays(cfg, panel, prepared.features.frame, bundle.scaler, names)
    feats, tradable_all, nlr, gap, vol = (cal[k] for k in ("features", "tradable", "returns", "gap_returns",
                                                            "volatility"))
    scale = float(bundle.model_kwargs.get("return_scale", 1.0))

    arrays, rows_of, stamps, outs = {}, {}, {}, {}
    k_asset = 0
    for split in SPLITS:
        w = windows[split]
        if len(w) == 0:
            raise InsufficientDataError(f"split {split!r} has no forecaster window: the portfolio env has no bars")
        w_rows, w_cols = _cells(panel, w.timestamp, w.symbol)
        first, last = int(w_rows.min()), int(w_rows.max())
        start = max(0, first - (window - 1))
        rows = np.arange(start, min(last + 1, n_cal - 1) + 1)
        if len(rows) < window + 1:
            raise InsufficientDataError(f"split {split!r}: {len(rows)} calendar bars, the portfolio env needs "
                                        f"rl.window + 1 = {window + 1}")
        out = agent_outputs(bundle, w.x, cfg.rl.forecast_inputs)  # MC masks: inputs.MC_INPUT_SEED, as served
        fc_long = forecast_inputs(out, scale, cfg.rl.forecast_inputs)
        k_asset = fc_long.shape[1]
        fc = np.zeros((len(rows), n_assets, k_asset), dtype=np.float32)
        fc[w_rows - start, w_cols] = fc_long
        returns, gaps = nlr[rows].copy(), gap[rows].copy()
        for arr in (returns, gaps):  # the last env row is never traded; the calendar's last row has no next bar
            arr[-1] = np.where(np.isfinite(arr[-1]), arr[-1], 0.0)
        arrays[split] = {"features": feats[rows], "forecasts": fc.reshape(len(rows), -1),
                         "returns": returns, "gap_returns": gaps, "volatility": vol[rows],
                         "tradable": tradable_all[rows]}
        rows_of[split], stamps[split], outs[split] = rows, panel.timestamps[rows], out
    columns = [f"{symbol}/{name}" for symbol in panel.symbols for name in names]
    return PortfolioData(arrays=arrays, rows=rows_of, timestamps=stamps, window=window, symbols=tuple(panel.symbols),
                         asset_features=names, feature_names=columns, n_forecast_inputs=k_asset, forecasts=outs)


def portfolio_env_kwargs(cfg: PipelineConfig, arrays: Mapping[str, np.ndarray], *, train: bool) -> dict[str, Any]:
    """TradingEnv keyword arguments of one split's :class:`PortfolioData` arrays: those of
    :func:`raytrade.rl.env_inputs.env_kwargs` (random starts and ``rl.episode_length`` for training, one episode over
    the split otherwise; costs, fills, slippage, reward) plus ``tradable`` and ``weight_limits`` from
    ``cfg.portfolio``. ``max_position`` is 1: the exposure limits are ``cfg.portfolio``'s (``backtest.max_position``
    is the one-asset limit)."""
    kwargs = env_kwargs(cfg, dict(arrays), train=train)
    kwargs.update(max_position=1.0, tradable=np.asarray(arrays["tradable"], dtype=bool),
                  weight_limits=weight_limits(cfg.portfolio))
    return kwargs


def portfolio_rollout(policy: Policy, env_kwargs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic episode of ``policy`` in ``TradingEnv(**env_kwargs)`` from its first decision bar.

    Returns:
        ``(weights (m, A), net_returns (m,))``: the target weights each step asked for (``info["order"]`` with a
        ``tradable`` mask, else ``info["target"]``; fractions of equity, within the env's exposure limits) and the
        simple net return of each bar after costs.
    """
    from raytrade_envs import TradingEnv

    env = TradingEnv(**dict(env_kwargs))
    obs, info = env.reset(seed=0)
    weights, returns = [], []
    done = False
    while not done:
        action = np.atleast_1d(policy.act(obs)[0]).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        weights.append(np.atleast_1d(info.get("order", info["target"])))
        returns.append(info["net_return"])
        done = terminated or truncated
    return np.asarray(weights, dtype=np.float64), np.asarray(returns, dtype=np.float64)


def portfolio_agent_weights(policies: Mapping[str, Policy], env_kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each policy's target weights over the env's decision bars: ``{name: (m, A)}`` (:func:`portfolio_rollout`).

    Args:
        policies: agent name -> trained policy (e.g. ``AgentOutcome.policy`` of
            :func:`raytrade.rl.agents.train_agents`).
        env_kwargs: the TEST env's keyword arguments (:func:`portfolio_env_kwargs` with ``train=False``: one episode
            from env row ``window - 1``, no random start).

    Returns:
        ``(m, A)`` weights per agent for the decision bars ``window - 1 .. n - 2`` of the env (for a
        :class:`PortfolioData` split: :meth:`PortfolioData.decisions`, the portfolio stage's test bars). Each row is
        ``project_weights(clip(action))``, so it respects every exposure limit; an asset that cannot trade at that
        bar keeps its units whatever its weight says. ``portfolio_backtest(weights, **backtest_inputs(env_kwargs),
        ...)`` reproduces the env's equity.
    """
    return {name: portfolio_rollout(policy, env_kwargs)[0] for name, policy in policies.items()}


def backtest_inputs(env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The env's market over its decision bars (env rows ``window - 1 .. n - 2``) as keyword arguments of
    :func:`raytrade.evaluation.portfolio.portfolio_backtest`: ``next_log_returns``, ``tradable`` (None without a
    mask), ``gap_returns`` (None when fills are at the close) and ``slippage`` (``slippage_vol_mult * volatility``,
    None without slippage), each ``(m, A)``."""
    window = int(env_kwargs.get("window", 8))
    sl = slice(window - 1, len(env_kwargs["returns"]) - 1)

    def part(key: str) -> np.ndarray | None:
        value = env_kwargs.get(key)
        return None if value is None else np.asarray(value)[sl]

    mult = float(env_kwargs.get("slippage_vol_mult", 0.0))
    vol = part("volatility")
    return {"next_log_returns": np.asarray(env_kwargs["returns"], dtype=np.float64)[sl], "tradable": part("tradable"),
            "gap_returns": part("gap_returns"), "slippage": None if vol is None or mult == 0.0 else mult * vol}
