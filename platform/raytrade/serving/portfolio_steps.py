"""The work of ``POST /portfolio`` as plain functions, with no Serve in them (the portfolio deployments call them,
and so can tests and notebooks, which then compute the served decision).

A decision is :func:`universe_features` (every symbol's bars -> per-symbol features, then the cross-sectional
``xs_`` columns across the request's symbols, and FinRL's turbulence index at the last bar) -> the forecaster
(:func:`raytrade.serving.steps.forecast_items`: one batched pass, the bundle's scaler, MC dropout with
:data:`raytrade.rl.inputs.MC_INPUT_SEED`) -> :func:`decide` (:func:`raytrade.rl.portfolio_decision.portfolio_decision`
with the :class:`PortfolioParams` the universe run was backtested with).

Served == backtest: a request that carries, for every symbol of the universe, the bars the pipeline had (from
``data.start``) up to a test bar ``t`` gets the weights the backtest's ``forecaster_risk_limited`` targeted at ``t``
when it also carries the book's held weights and drawdown at ``t``. Fewer bars give the same formulas on less
history: the indicators' EMAs restart, the cross-section and the universe return of the early rows have fewer
members, so the numbers differ from the backtest's (as for ``/predict``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from raytrade.config import FeatureConfig, PipelineConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.data.universe import Panel
from raytrade.data.validation import validate_bars
from raytrade.errors import DataValidationError, InsufficientDataError
from raytrade.features.cross_sectional import add_cross_sectional, cross_sectional_warmup
from raytrade.features.technical import compute_features, feature_columns, warmup_bars
from raytrade.rl.portfolio_decision import past_log_returns, portfolio_decision
from raytrade.rl.portfolio_risk import turbulence_index

__all__ = ["PortfolioParams", "SymbolDataError", "agent_items", "agent_weights", "check_universe_bars", "decide",
           "layout", "min_bars", "turbulence_at_last",
           "portfolio_observation", "universe_features", "universe_features_from_store"]


class SymbolDataError(InsufficientDataError):
    """Too few bars (or no complete feature window) of one ``symbol`` of a request; picklable with the symbol (the
    Features replica returns it to the ingress, which answers 422 at ``["body", "bars", symbol]``)."""

    def __init__(self, symbol: str, message: str) -> None:
        self.symbol = symbol
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.symbol, self.args[0]))


class PortfolioParams(BaseModel):
    """What a universe run backtested ``forecaster_risk_limited`` with: the ``user_config`` of the portfolio app's
    ingress (stored with the deployment; changing it reconfigures the replicas without a restart). Weights and
    limits are fractions of equity; windows are bars of the universe's calendar.

    Attributes:
        symbols: the universe the forecaster was trained on, in the backtest's column order (``top_k`` breaks ties
            by this order); a request may hold any of them, no other.
        reference_symbol: the symbol the cross-asset features are measured against (the pipeline's
            ``PreprocessResult.reference_symbol``); None when the forecaster has no cross-asset features.
        top_k, long_only, max_weight, max_gross, max_net, turbulence_window: ``portfolio.*`` of the run.
        max_drawdown, drawdown_cut: ``ensemble.*`` of the run.
        turbulence_threshold: the ``portfolio.turbulence_quantile`` of the turbulence index over the run's TRAIN
            bars (``report.json``'s ``backtest.turbulence_threshold``); None: the turbulence rule is off.
        forecaster_version: the registered forecaster version the run trained and backtested (pinned by the app,
            so the threshold and the model that goes with it never part); None: follow the alias.
        fill: ``rl.fill`` of the backtest (informational: an order decided at the close of ``t`` fills at the next
            open or at the close; Serve cannot know whether the asset trades at ``t + 1``, so a symbol with a bar
            at ``t`` counts as tradable).
    """

    model_config = ConfigDict(extra="forbid")

    symbols: tuple[str, ...] = Field(min_length=1)
    reference_symbol: str | None = None
    top_k: int = Field(3, gt=0)
    long_only: bool = True
    max_weight: float = Field(1.0, gt=0, le=1)
    max_gross: float = Field(1.0, gt=0, le=2)
    max_net: float = Field(1.0, ge=0, le=1)
    max_drawdown: float = Field(0.2, gt=0, le=1)
    drawdown_cut: float = Field(0.5, ge=0, le=1)
    rebalance_bars: int | None = Field(None, gt=0, description="the strategy's rebalance interval (bars): a client "
                                                               "sends rebalance=true on those bars")
    turbulence_window: int = Field(252, gt=1)
    turbulence_threshold: float | None = Field(None, allow_inf_nan=False)
    forecaster_version: str | None = None
    agent_versions: dict[str, str] = Field(default_factory=dict, description="portfolio agent -> its registered "
                                           "version the run backtested (pinned by the app)")
    fill: Literal["next_open", "close"] = "next_open"

    @classmethod
    def from_run(cls, cfg: PipelineConfig, backtest: Mapping[str, Any], reference_symbol: str | None,
                 forecaster_version: str | None, agent_versions: Mapping[str, str] | None = None) -> PortfolioParams:
        """The params of a universe run: ``cfg.portfolio``/``cfg.ensemble``/``cfg.rl.fill``, and from the portfolio
        stage's ``backtest`` block its ``symbols`` and ``turbulence_threshold`` (NaN -> None); ``agent_versions``:
        the registered version of each portfolio agent the run trained."""
        p = cfg.portfolio
        threshold = backtest.get("turbulence_threshold")
        threshold = None if threshold is None or not math.isfinite(float(threshold)) else float(threshold)
        return cls(symbols=tuple(backtest["symbols"]), reference_symbol=reference_symbol, top_k=p.top_k,
                   long_only=p.long_only, max_weight=p.max_weight, max_gross=p.max_gross, max_net=p.max_net,
                   max_drawdown=cfg.ensemble.max_drawdown, drawdown_cut=cfg.ensemble.drawdown_cut,
                   turbulence_window=p.turbulence_window, turbulence_threshold=threshold,
                   forecaster_version=forecaster_version, fill=cfg.rl.fill,
                   rebalance_bars=backtest.get("forecaster_rebalance_bars"), agent_versions=dict(agent_versions or {}))

    def limits(self) -> dict[str, Any]:
        """The exposure limits as keyword arguments of :func:`raytrade_envs.actions.project_weights`."""
        return {"long_only": self.long_only, "max_weight": self.max_weight, "max_gross": self.max_gross,
                "max_net": self.max_net}

    def decision_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`raytrade.rl.portfolio_decision.portfolio_decision` (but the bar's inputs)."""
        return {"top_k": self.top_k, "long_only": self.long_only, "max_weight": self.max_weight,
                "max_gross": self.max_gross, "max_net": self.max_net, "max_drawdown": self.max_drawdown,
                "drawdown_cut": self.drawdown_cut,
                "threshold": float("nan") if self.turbulence_threshold is None else self.turbulence_threshold}


def layout(spec: Mapping[str, Any]) -> tuple[FeatureConfig, bool, bool, list[str]]:
    """(feature config, cross-asset on, cross-sectional on, per-symbol feature columns) of a forecaster spec."""
    cfg = FeatureConfig.model_validate(spec["features"])
    columns = set(spec["columns"])
    own = set(feature_columns(cfg, cross_asset=False))
    cross_asset = bool((set(feature_columns(cfg, cross_asset=True)) - own) & columns)
    cross_sectional = any(c.startswith("xs_") for c in columns)
    return cfg, cross_asset, cross_sectional, feature_columns(cfg, cross_asset=cross_asset)


def min_bars(spec: Mapping[str, Any]) -> int:
    """Fewest bars of a symbol that give one full window of a universe forecaster (``spec``:
    :func:`raytrade.serving.steps.forecaster_spec`): the per-symbol warm-up (with the cross-asset features when the
    model has them), then the cross-sectional warm-up (:func:`raytrade.features.cross_sectional.cross_sectional_warmup`)
    when it has ``xs_`` columns, plus ``lookback``."""
    cfg, cross_asset, cross_sectional, _ = layout(spec)
    warm = warmup_bars(cfg, cross_asset=cross_asset)
    return (cross_sectional_warmup(cfg, warm) if cross_sectional else warm) + int(spec["lookback"])


def _turbulence(bars: pd.DataFrame, symbols: list[str], window: int) -> tuple[float, int, pd.Timestamp]:
    """FinRL's turbulence index at the last bar of the union calendar of ``bars`` (every symbol), the number of
    assets in it, and that bar's time. NaN (0 assets) with fewer than ``window + 2`` bars of any symbol."""
    panel = Panel.from_bars(bars, symbols)
    value, n_assets = turbulence_at_last(panel.close, panel.symbols, panel.timestamps, window)
    return value, n_assets, panel.timestamps[-1]


def turbulence_at_last(close: np.ndarray, symbols: Sequence[str], timestamps: Any, window: int) -> tuple[float, int]:
    """FinRL's turbulence index (:func:`raytrade.rl.portfolio_risk.turbulence_index`) at the last row of a close panel
    ``(T, assets)`` on one calendar (NaN where an asset has no bar), and the number of assets in it; NaN and 0 with
    fewer than ``window + 2`` rows. Only the last ``window + 2`` rows are read."""
    past = past_log_returns(close[-(window + 2):])[-(window + 1):]
    if len(past) < window + 1:
        return float("nan"), 0
    value = float(turbulence_index(past, window, symbols=symbols, index=list(timestamps)[-(window + 1):])[-1])
    return value, int(np.isfinite(past).all(axis=0).sum())


def check_universe_bars(frames: Mapping[str, pd.DataFrame], spec: Mapping[str, Any],
                        reference_symbol: str | None) -> None:
    """The checks of a full-history universe request: every symbol's bars validated
    (:func:`raytrade.data.validation.validate_bars`), at least :func:`min_bars` of each, and the reference symbol
    present when the forecaster has cross-asset features.

    Raises:
        DataValidationError: a rule broken (names rule, column, symbol, timestamp), or no reference symbol (rule
            ``reference_symbol``).
        SymbolDataError: a symbol has fewer than :func:`min_bars` bars (names the symbol).
    """
    lookback, need = int(spec["lookback"]), min_bars(spec)
    for symbol, frame in frames.items():
        validate_bars(frame)
        if len(frame) < need:
            raise SymbolDataError(symbol,
                f"symbol {symbol}: need at least {need} bars (feature warm-up, cross-sectional warm-up and lookback "
                f"{lookback}), got {len(frame)}")
    if layout(spec)[1] and reference_symbol not in frames:
        raise DataValidationError(
            "reference_symbol", f"the forecaster's cross-asset features are measured against {reference_symbol}; "
            f"send its bars too", column=None, symbol=reference_symbol)


def universe_features(frames: Mapping[str, pd.DataFrame], spec: Mapping[str, Any], reference_symbol: str | None,
                      turbulence_window: int) -> dict[str, Any]:
    """A universe forecaster's input at the last bar of a request, from every symbol's bars.

    Per symbol (oldest first): validation (:func:`raytrade.data.validation.validate_bars`), the per-symbol features
    (:func:`raytrade.features.technical.compute_features`, against ``reference_symbol``'s close when the model has
    cross-asset features), then :func:`raytrade.features.cross_sectional.add_cross_sectional` across the request's
    symbols: the pipeline's features on the same bars. The decision bar ``t`` is the latest timestamp of any symbol.
    A symbol is tradable at ``t`` when it has a bar at ``t`` whose features are all defined (the backtest's
    feature row at ``t``); it has a forecast input when its last ``lookback`` complete rows end at ``t``.

    Args:
        frames: symbol -> OHLCV bars with ``timestamp`` (UTC) and ``symbol``, in the universe's order.
        spec: :func:`raytrade.serving.steps.forecaster_spec` of the forecaster.
        reference_symbol: see :class:`PortfolioParams`.
        turbulence_window: ``portfolio.turbulence_window`` (bars).

    Returns:
        ``{"timestamp": t, "rows": {symbol: DataFrame (lookback, 1 + n_features) unscaled, oldest first} (symbols
        with a window at t), "tradable": {symbol: bool}, "turbulence": float (NaN: fewer than turbulence_window + 2
        bars), "turbulence_assets": int, "n_bars": {symbol: int}}``.

    Raises:
        DataValidationError: a symbol's bars break a validation rule (names rule, column, symbol, timestamp), or the
            model's reference symbol is not in the request (rule ``reference_symbol``).
        SymbolDataError: (an ``InsufficientDataError``) a symbol has fewer than :func:`min_bars` bars, or no
            complete window at its last bar (names the symbol).
    """
    cfg, cross_asset, cross_sectional, own_columns = layout(spec)
    columns, lookback = list(spec["columns"]), int(spec["lookback"])
    check_universe_bars(frames, spec, reference_symbol)
    reference = None
    if cross_asset:
        ref = frames[reference_symbol]
        reference = pd.Series(ref["close"].to_numpy(dtype=np.float64), index=pd.DatetimeIndex(ref[TIMESTAMP]))
    parts = [compute_features(frame.reset_index(drop=True), cfg, reference=reference) for frame in frames.values()]
    frame = pd.concat(parts, ignore_index=True)
    if cross_sectional:
        frame = add_cross_sectional(frame, cfg, columns=own_columns)
    bars = pd.concat(list(frames.values()), ignore_index=True)
    turbulence, n_assets, t = _turbulence(bars, list(frames), turbulence_window)
    rows: dict[str, pd.DataFrame] = {}
    tradable: dict[str, bool] = {}
    for symbol, part in frame.groupby(SYMBOL, sort=False):
        complete = part[part[columns].notna().all(axis=1)]
        last = pd.Timestamp(part[TIMESTAMP].iloc[-1])
        if complete.empty or pd.Timestamp(complete[TIMESTAMP].iloc[-1]) != last or len(complete) < lookback:
            raise SymbolDataError(str(symbol),
                f"symbol {symbol}: no complete feature window of {lookback} rows at its last bar {last.isoformat()} "
                f"({len(complete)} complete rows of {len(part)} bars): send more bars")
        tradable[str(symbol)] = bool(last == t)
        if last == t:
            rows[str(symbol)] = complete.iloc[-lookback:][[TIMESTAMP, *columns]].reset_index(drop=True)
    return {"timestamp": t.to_pydatetime(), "rows": rows, "tradable": tradable, "turbulence": turbulence,
            "turbulence_assets": n_assets, "n_bars": {s: len(f) for s, f in frames.items()}}


def universe_features_from_store(windows: Mapping[str, Any], spec: Mapping[str, Any],
                                 turbulence_window: int) -> dict[str, Any]:
    """As :func:`universe_features`, from each symbol's latest window of the online store
    (:class:`raytrade.store.LatestWindow`: the unscaled feature rows the pipeline wrote, and its raw bars). The
    decision bar is the latest last row of any symbol; a symbol whose window ends earlier is not tradable. The
    turbulence index comes from the stored bars (NaN with fewer than ``turbulence_window + 2`` of them).

    Raises:
        SymbolDataError: a stored window has fewer than ``lookback`` complete rows (names the symbol).
    """
    columns, lookback = list(spec["columns"]), int(spec["lookback"])
    last: dict[str, pd.Timestamp] = {}
    rows: dict[str, pd.DataFrame] = {}
    for symbol, window in windows.items():
        feats = window.features
        missing = [c for c in columns if c not in feats]
        if missing or len(feats) < lookback or feats[columns].iloc[-lookback:].isna().any().any():
            raise SymbolDataError(symbol, f"symbol {symbol}: the stored window has no {lookback} complete rows of the "
                                        f"forecaster's features (missing columns {missing[:5]})")
        rows[symbol] = feats.iloc[-lookback:][[TIMESTAMP, *columns]].reset_index(drop=True)
        last[symbol] = pd.Timestamp(rows[symbol][TIMESTAMP].iloc[-1])
    t = max(last.values())
    bars = pd.concat([w.bars.assign(**{SYMBOL: s}) for s, w in windows.items()], ignore_index=True)
    bars = bars[pd.DatetimeIndex(bars[TIMESTAMP]) <= t]
    turbulence, n_assets, _ = _turbulence(bars, list(windows), turbulence_window)
    return {"timestamp": t.to_pydatetime(), "rows": {s: r for s, r in rows.items() if last[s] == t},
            "tradable": {s: bool(last[s] == t) for s in windows}, "turbulence": turbulence,
            "turbulence_assets": n_assets, "n_bars": {s: len(w.bars) for s, w in windows.items()}}


def decide(params: PortfolioParams, symbols: list[str], expected_return: Mapping[str, float],
           tradable: Mapping[str, bool], held: Mapping[str, float], drawdown: float,
           turbulence: float, rebalance: bool = True) -> dict[str, Any]:
    """The target weights of the request's ``symbols`` (universe order) with
    :func:`raytrade.rl.portfolio_decision.portfolio_decision` and ``params``.

    Args:
        expected_return: symbol -> the forecaster's expected log return at the decision bar (absent: no forecast).
        tradable: symbol -> the order can fill; held: symbol -> weight held now (absent: 0).
        drawdown: the book's drawdown (fraction); turbulence: the index at the bar (NaN: rule off).
        rebalance: a rebalance bar (False: keep ``held``, only the risk layer acts).

    Returns:
        ``{"weights": {symbol: w}, "cash", "gross_exposure", "net_exposure", "risk": {...}}`` (fractions of equity).
    """
    er = np.array([expected_return.get(s, np.nan) for s in symbols], dtype=np.float64)
    mask = np.array([bool(tradable.get(s, False)) for s in symbols])
    kept = np.array([float(held.get(s, 0.0)) for s in symbols])
    kwargs = params.decision_kwargs()
    w = portfolio_decision(er, mask, held=kept, drawdown=drawdown, turbulence=turbulence, rebalance=rebalance,
                           **kwargs)
    threshold = params.turbulence_threshold
    if threshold is None:
        rule = "off: the run has no turbulence threshold"
    elif not math.isfinite(turbulence):
        rule = (f"off: needs portfolio.turbulence_window + 2 = {params.turbulence_window + 2} bars of a symbol "
                "(returns over the window and the bar)")
    else:
        rule = "on"
    turbulent = rule == "on" and turbulence > threshold
    return {
        "weights": {s: float(x) for s, x in zip(symbols, w, strict=True)},
        "cash": float(1.0 - w.sum()), "gross_exposure": float(np.abs(w).sum()), "net_exposure": float(w.sum()),
        "risk": {"drawdown": float(drawdown), "max_drawdown": params.max_drawdown,
                 "drawdown_cut": bool(drawdown > params.max_drawdown and not turbulent),
                 "turbulence": float(turbulence) if math.isfinite(turbulence) else None,
                 "turbulence_threshold": threshold, "turbulent": bool(turbulent), "turbulence_rule": rule},
    }



def agent_items(feats: Mapping[str, Any], by_symbol: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``items`` of :func:`portfolio_observation` and :func:`agent_weights`: per symbol with a window at the bar,
    its :func:`raytrade.serving.steps.forecast_items` result (``by_symbol``; ``window``, ``columns``, ``outputs``,
    ``return_scale``) with the timestamps of its rows in ``feats`` (:func:`universe_features`)."""
    return {s: {k: fc[k] for k in ("window", "columns", "outputs", "return_scale")}
            | {"timestamps": feats["rows"][s][TIMESTAMP].to_numpy()} for s, fc in by_symbol.items()}


def _ns_times(times: Any) -> np.ndarray:
    """Sorted bar times (datetime64, Timestamps or a DatetimeIndex) as int64 UTC nanoseconds."""
    a = np.asarray(times)
    if a.dtype.kind == "M":
        return a.astype("datetime64[ns]").view(np.int64)
    return pd.DatetimeIndex(a).as_unit("ns").asi8


def portfolio_observation(policy: Any, items: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float],
                          unrealised_pnl: float = 0.0, drawdown: float = 0.0) -> np.ndarray:
    """A portfolio agent's observation at the request's bar, laid out as the portfolio env's
    (:mod:`raytrade_envs.observation`, "Portfolio layout"; :func:`raytrade_envs.observation_vector`).

    The policy's ``feature_names`` (``"<symbol>/<feature>"``, asset-major, saved in training by
    :func:`raytrade.rl.portfolio_inputs.portfolio_data`) give its universe and per-asset features. Per symbol: its
    scaled feature rows at the last ``policy.window`` bars of the calendar (the union of the timestamps of the
    symbols with a window; 0 where the symbol has no row, as in training), its forecaster inputs
    (:func:`raytrade.rl.inputs.forecast_inputs` of ``policy.forecast_inputs``; 0 without a window at the bar), and
    its held weight. A symbol of the universe that has no window at the bar observes zeros, as an asset without a
    feature row does in training; one that has a row at the bar but missed an earlier bar of the window sees 0
    there, as in training.

    Args:
        items: symbol -> ``{"window": (lookback, n_features) scaled, "columns", "outputs", "return_scale",
            "timestamps": (lookback,)}`` (a :func:`raytrade.serving.steps.forecast_items` result with its rows'
            timestamps), for the symbols with a window at the bar.
        weights: symbol -> weight the agent's book holds now (fraction of equity; absent: 0).
        unrealised_pnl, drawdown: the agent's book's account state (fractions; the env's definitions).

    Raises:
        ValueError: the policy is not a portfolio policy (feature names without ``symbol/``) or ``items`` is empty.
    """
    from raytrade.rl.inputs import forecast_inputs
    from raytrade_envs import observation_vector

    names = list(policy.feature_names)
    if not names or any("/" not in n for n in names):
        raise ValueError("not a portfolio policy: its feature names are not '<symbol>/<feature>'")
    if not items:
        raise ValueError("no symbol has a forecaster window at the bar")
    symbols = list(dict.fromkeys(n.split("/", 1)[0] for n in names))
    per_asset = [n.split("/", 1)[1] for n in names[: len(names) // len(symbols)]]
    window = int(policy.window)
    times = {s: _ns_times(it["timestamps"]) for s, it in items.items()}
    stamps = np.unique(np.concatenate(list(times.values())))[-window:]  # the calendar's last bars, sorted
    feats = np.zeros((window, len(symbols), len(per_asset)), dtype=np.float32)
    rows = {s: forecast_inputs(it["outputs"], it["return_scale"], policy.forecast_inputs)[0]
            for s, it in items.items()}
    k_asset = len(next(iter(rows.values())))
    fc = np.zeros((len(symbols), k_asset), dtype=np.float32)
    for a, symbol in enumerate(symbols):
        it = items.get(symbol)
        if it is None:
            continue
        cols = [list(it["columns"]).index(n) for n in per_asset]
        own = times[symbol]
        at = np.minimum(np.searchsorted(own, stamps), len(own) - 1)
        ok = own[at] == stamps  # the symbol has a row at that bar
        feats[window - len(stamps):][ok, a] = np.asarray(it["window"], dtype=np.float32)[at[ok]][:, cols]
        fc[a] = rows[symbol]
    held = np.array([float(weights.get(s, 0.0)) for s in symbols])
    return observation_vector(feats.reshape(window, -1), fc.ravel(), held, unrealised_pnl, drawdown,
                              account=policy.account_observation)


def agent_weights(policy: Any, items: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float],
                  unrealised_pnl: float, drawdown: float, limits: Mapping[str, Any]) -> dict[str, float]:
    """A portfolio agent's target weights: its deterministic action on :func:`portfolio_observation`, mapped as the
    env maps it, ``project_weights(clip(action, -1, 1), **limits)`` (:mod:`raytrade_envs.actions`; ``limits``:
    :meth:`PortfolioParams.limits`). Returns symbol -> weight (fractions of equity) for the policy's universe."""
    from raytrade_envs.actions import project_weights

    obs = portfolio_observation(policy, items, weights, unrealised_pnl, drawdown)
    action = np.asarray(policy.act(obs[None]), dtype=np.float64).reshape(-1)
    w = project_weights(np.clip(action, -1.0, 1.0), **limits)
    symbols = list(dict.fromkeys(n.split("/", 1)[0] for n in policy.feature_names))
    return {s: float(x) for s, x in zip(symbols, w, strict=True)}
