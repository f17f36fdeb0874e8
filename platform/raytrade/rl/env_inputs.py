"""Trading-env inputs built from a forecaster bundle and the prepared splits (used by agent training and the
strategy backtests; Serve builds the same observation columns with :mod:`raytrade.rl.inputs`).

:func:`agent_data`: per split, the env inputs at every bar t of the forecaster's windows: the scaled
``rl.features`` row, the forecaster outputs (:mod:`raytrade.rl.inputs`), the next-bar log return
``ln(close[t+1]/close[t])``, the gap ``ln(open[t+1]/close[t])`` (fills at the next open) and the
``VOL_BARS``-bar realised volatility of 1-bar log returns known at t (for slippage). :func:`env_kwargs` turns
one split's arrays into :class:`raytrade_envs.TradingEnv` keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import TIMESTAMP
from raytrade.dataset.windows import Windows
from raytrade.errors import ConfigError
from raytrade.rl.env import PER_BAR_KEYS, env_config
from raytrade.rl.inputs import agent_outputs, forecast_inputs

if TYPE_CHECKING:
    from raytrade.dataset.prepare import PreparedData
    from raytrade.models.bundle import ForecasterBundle


VOL_BARS = 24  # bars of the realised volatility used for slippage


@dataclass
class AgentData:
    """Env inputs per split (``train``/``val``/``test``), aligned with the forecaster's windows.

    Attributes:
        arrays: split -> ``features`` (n, F) scaled ``rl.features`` at t, ``forecasts`` (n, K),
            ``returns`` / ``gap_returns`` / ``volatility`` (n,) (see the module docstring).
        timestamps: split -> (n,) the bar t of each row.
        feature_names: the ``rl.features`` columns, in order.
        forecasts: split -> the raw ``forecast_windows`` outputs.
    """

    arrays: dict[str, dict[str, np.ndarray]]
    timestamps: dict[str, np.ndarray]
    feature_names: list[str]
    forecasts: dict[str, dict[str, np.ndarray]]


def bar_terms(bars: pd.DataFrame) -> pd.DataFrame:
    """Per bar t but the last (indexed by timestamp): ``gap_return = ln(open[t+1]/close[t])`` and ``volatility``
    (std of the last ``VOL_BARS`` 1-bar log returns up to t, fraction per bar), from
    :func:`raytrade_envs.ohlcv_arrays` (the env's own definition)."""
    from raytrade_envs import ohlcv_arrays

    arrays = ohlcv_arrays(bars["open"].to_numpy(np.float64), bars["close"].to_numpy(np.float64), VOL_BARS)
    return pd.DataFrame({"gap_return": arrays["gap_returns"], "volatility": arrays["volatility"]},
                        index=pd.DatetimeIndex(bars[TIMESTAMP].iloc[:-1]))


def agent_data(cfg: PipelineConfig, prepared: PreparedData, bars: pd.DataFrame, bundle: ForecasterBundle,
               windows: dict[str, Windows]) -> AgentData:
    """The env inputs of every split from ``bundle``'s outputs on ``windows``
    (:func:`~raytrade.rl.inputs.agent_outputs`: what ``rl.forecast_inputs`` needs, nothing more).

    Raises:
        ConfigError: an ``rl.features`` name is not a feature column, or uncertainty without MC dropout.
    """
    names = list(cfg.rl.features) or prepared.feature_columns
    unknown = [n for n in names if n not in prepared.feature_columns]
    if unknown:
        raise ConfigError(f"rl.features: unknown feature(s) {unknown}; see docs/FEATURES.md")
    cols = [prepared.feature_columns.index(n) for n in names]
    scale = float(bundle.model_kwargs.get("return_scale", 1.0))
    terms = bar_terms(bars)
    arrays, stamps, outs = {}, {}, {}
    for split, w in windows.items():
        out = agent_outputs(bundle, w.x, cfg.rl.forecast_inputs)  # MC masks: inputs.MC_INPUT_SEED, as served
        t = terms.reindex(pd.DatetimeIndex(pd.to_datetime(w.timestamp, utc=True)))
        arrays[split] = {"features": w.x[:, -1, cols], "forecasts": forecast_inputs(out, scale, cfg.rl.forecast_inputs),
                         "returns": w.next_return, "gap_returns": t["gap_return"].to_numpy(),
                         "volatility": t["volatility"].to_numpy()}
        stamps[split], outs[split] = w.timestamp, out
    return AgentData(arrays=arrays, timestamps=stamps, feature_names=names, forecasts=outs)


def bundle_windows(prepared: PreparedData, bundle: ForecasterBundle) -> dict[str, Windows]:
    """Windows of every split scaled with the BUNDLE's scaler and lookback (what it sees when served)."""
    from raytrade.dataset.windows import make_windows

    return {name: make_windows(bundle.scaler.transform(part), list(bundle.scaler.columns), bundle.lookback)
            for name, part in prepared.split.parts().items()}


def env_kwargs(cfg: PipelineConfig, arrays: dict[str, np.ndarray], *, train: bool) -> dict[str, Any]:
    """TradingEnv keyword arguments for one split: random starts and ``rl.episode_length`` for training,
    one episode over the whole split otherwise; costs, fills, slippage and reward from the config."""
    n = len(arrays["returns"])
    fill_at_open = cfg.rl.fill == "next_open"
    return env_config(
        features=arrays["features"], returns=arrays["returns"], forecasts=arrays["forecasts"], window=cfg.rl.window,
        cost_bps=cfg.backtest.cost_bps, max_position=cfg.backtest.max_position,
        episode_length=min(cfg.rl.episode_length, n - cfg.rl.window - 1) if train else None, random_start=train,
        gap_returns=arrays["gap_returns"] if fill_at_open else None,
        volatility=arrays["volatility"] if cfg.rl.slippage_vol_mult > 0 else None,
        slippage_vol_mult=cfg.rl.slippage_vol_mult,
        reward=cfg.rl.reward if train else "log_return", reward_params=dict(cfg.rl.reward_params) if train else None,
    )


def all_bars(data: AgentData) -> dict[str, np.ndarray]:
    """The env inputs of train, val and test back to back (the embargo gaps between splits are skipped)."""
    parts = [data.arrays[s] for s in ("train", "val", "test")]
    return {key: np.concatenate([p[key] for p in parts]) for key in PER_BAR_KEYS}

