"""Forecaster outputs as RL observation inputs: the one definition used in training, backtest and Serve.

The trading env appends these per-bar columns to its feature window (its ``forecasts`` argument); a
served agent builds the same columns from the served forecast. Inputs (``rl.forecast_inputs``), in order:

* ``probs`` (3): P(sell), P(hold), P(buy).
* ``expected_return`` (1): predicted log return over the label horizon divided by the model's
  ``return_scale`` (the training-set std of the label), i.e. a z-score.
* ``uncertainty`` (2): MC-dropout std of the predicted return (also / ``return_scale``) and the
  mutual information of the class prediction (nats; Gal & Ghahramani 2016, "Dropout as a Bayesian
  Approximation"). Needs ``model.mc_samples > 0``.
* ``embedding`` (``model.embed_dim``): the forecaster's fused embedding (``forward(x, return_features=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raytrade.errors import ConfigError

__all__ = ["agent_outputs", "forecast_inputs"]


#: Seed of the MC-dropout masks behind the agents' uncertainty inputs. A constant, not ``rl.seed``: the served app
#: (:func:`raytrade.serving.steps.forecast_items`) must draw the masks the agents saw in training and the backtest.
MC_INPUT_SEED: int = 0


def agent_outputs(bundle: Any, x: np.ndarray, inputs: Sequence[str],
                  seed: int = MC_INPUT_SEED) -> dict[str, np.ndarray]:
    """The forecaster outputs ``inputs`` need, for scaled windows ``x (n, lookback, n_features)``.

    ``probs``, ``expected_return`` and ``embedding`` come from the deterministic pass (dropout off), the same
    numbers the forecaster signal and ``POST /predict`` report; with ``uncertainty``, ``return_std`` and
    ``mutual_information`` (and ``probs_std``, ``predictive_entropy``) come from ``bundle.mc_samples`` MC-dropout
    passes whose dropout masks come from ``seed`` alone (torch's global RNG is not touched).

    Raises:
        ConfigError: ``uncertainty`` is asked for but the bundle has ``mc_samples == 0``.
    """
    embedding = "embedding" in inputs
    if "uncertainty" not in inputs:
        return bundle.forecast_windows(x, embedding=embedding)
    if bundle.mc_samples <= 0:
        raise ConfigError("rl.forecast_inputs: 'uncertainty' needs model.mc_samples > 0 (MC-dropout passes)")
    # one call: the deterministic pass, then the MC passes, whose masks come from `seed` alone (the same for
    # every window, so a window served alone gets the numbers the backtest computed for it in bulk)
    return bundle.forecast_windows(x, mc_samples=bundle.mc_samples, embedding=embedding, mc_means=False,
                                   mc_seed=seed)


def forecast_inputs(out: Mapping[str, np.ndarray], return_scale: float, inputs: Sequence[str]) -> np.ndarray:
    """Observation columns ``(n, K)`` float32 from ``forecast_windows`` output ``out`` (n windows).

    Args:
        out: ``probs`` (n, 3), ``expected_return`` (n,), and, when asked for, ``return_std`` (n,),
            ``mutual_information`` (n,), ``embedding`` (n, embed_dim).
        return_scale: the model's return scale (log-return units); 0 is treated as 1.
        inputs: names from :data:`raytrade.config.FORECAST_INPUTS`, in the order wanted.

    Raises:
        ConfigError: an input is asked for that ``out`` does not hold (e.g. no MC dropout was run).
    """
    scale = float(return_scale) or 1.0
    n = len(out["probs"])
    cols: list[np.ndarray] = []
    for name in inputs:
        if name == "probs":
            cols.append(np.asarray(out["probs"]).reshape(n, 3))
        elif name == "expected_return":
            cols.append(np.asarray(out["expected_return"]).reshape(n, 1) / scale)
        elif name == "uncertainty":
            if "return_std" not in out or "mutual_information" not in out:
                raise ConfigError("forecast input 'uncertainty' needs MC-dropout outputs (model.mc_samples > 0)")
            cols += [np.asarray(out["return_std"]).reshape(n, 1) / scale,
                     np.asarray(out["mutual_information"]).reshape(n, 1)]
        elif name == "embedding":
            if "embedding" not in out:
                raise ConfigError("forecast input 'embedding' needs forecast_windows(..., embedding=True)")
            cols.append(np.asarray(out["embedding"]).reshape(n, -1))
        else:
            raise ConfigError(f"unknown forecast input {name!r}")
    if not cols:
        return np.zeros((n, 0), np.float32)
    return np.concatenate(cols, axis=1).astype(np.float32)
