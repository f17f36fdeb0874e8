"""The forecaster inference bundle: network weights + train-only scaler + feature/label config.

One directory (``model.pt`` + ``bundle.json``) is everything needed to go from raw bars to a
forecast, so training, backtests, the RL environment and Ray Serve all use the SAME feature code
and scaler. MLflow stores this directory as the registered model (see :mod:`raytrade.tracking`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from raytrade.config import FeatureConfig, LabelConfig
from raytrade.dataset.labels import CLASS_NAMES
from raytrade.errors import InsufficientDataError, ModelNotFoundError
from raytrade.features.scaler import FeatureScaler
from raytrade.features.technical import compute_features, feature_set_version, warmup_bars
from raytrade.models.registry import build_model

STATE_FILE = "model.pt"
META_FILE = "bundle.json"


@dataclass
class ForecasterBundle:
    """A trained forecaster ready for inference (always in eval mode, on CPU unless moved).

    Attributes:
        model: the network; input ``(batch, lookback, n_features)``.
        model_name, model_kwargs: how to rebuild it (see :mod:`raytrade.models.registry`).
        scaler: fitted on training rows only.
        features, labels: the feature windows and the label horizon/threshold it was trained with.
        lookback: bars per input window.
        mc_samples: MC-dropout passes used when a caller asks for uncertainty (0 = none).
    """

    model: torch.nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    scaler: FeatureScaler
    features: FeatureConfig
    labels: LabelConfig
    lookback: int
    mc_samples: int = 0

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def feature_set_version(self) -> str:
        """Version of the feature set this model was trained on (keys of the online store)."""
        return feature_set_version(self.features, self.scaler.columns)

    def window_from_features(self, features: pd.DataFrame) -> np.ndarray:
        """The scaled window ``(1, lookback, n_features)`` from stored UNSCALED feature rows (oldest first).

        Raises:
            InsufficientDataError: fewer than ``lookback`` rows, or a feature column is missing.
        """
        missing = [c for c in self.scaler.columns if c not in features.columns]
        if missing or len(features) < self.lookback:
            raise InsufficientDataError(
                f"stored window has {len(features)} rows (need {self.lookback}) and lacks columns {missing[:5]}"
            )
        return self.scaler.transform_array(features.iloc[-self.lookback :])[None]

    @property
    def min_bars(self) -> int:
        """Fewest raw bars that give one full window: feature warm-up + lookback."""
        return warmup_bars(self.features) + self.lookback

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``model.pt`` (state dict) and ``bundle.json`` (:func:`bundle_metadata`) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / STATE_FILE)
        meta = {**bundle_metadata(self.scaler, self.features, self.labels, self.lookback, self.mc_samples),
                "model_name": self.model_name, "model_kwargs": _jsonable(self.model_kwargs)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ForecasterBundle:
        """Load a bundle saved by :meth:`save` or a Ray Train checkpoint of the forecaster.

        Raises:
            ModelNotFoundError: ``directory`` lacks ``bundle.json`` or ``model.pt``.
        """
        directory = Path(directory)
        if not (directory / META_FILE).is_file() or not (directory / STATE_FILE).is_file():
            raise ModelNotFoundError(f"{directory} is not a forecaster bundle (needs {META_FILE} and {STATE_FILE})")
        meta = json.loads((directory / META_FILE).read_text())
        kwargs = dict(meta["model_kwargs"])
        model = build_model(meta["model_name"], **kwargs)
        model.load_state_dict(torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True))
        return cls(model=model, model_name=meta["model_name"], model_kwargs=kwargs,
                   scaler=FeatureScaler.from_dict(meta["scaler"]),
                   features=FeatureConfig.model_validate(meta["features"]),
                   labels=LabelConfig.model_validate(meta["labels"]), lookback=int(meta["lookback"]),
                   mc_samples=int(meta.get("mc_samples", 0)))

    # ---- inference ---------------------------------------------------------------------------
    def forecast_windows(self, x: np.ndarray, batch_size: int = 2048, mc_samples: int = 0,
                         embedding: bool = False, mc_means: bool = True,
                         mc_seed: int | None = None) -> dict[str, np.ndarray]:
        """Forecast scaled windows ``x (n, lookback, n_features)``.

        Returns float32 ``probs`` (n, 3) [sell, hold, buy] and ``expected_return`` (n,) (log return over
        the label horizon); with ``mc_samples > 0`` (MC dropout) also ``probs_std`` (n, 3),
        ``return_std`` (n,) (log units), ``predictive_entropy`` and ``mutual_information`` (n,) in nats,
        and the means over the samples as ``probs``/``expected_return`` (the deterministic pass's with
        ``mc_means=False``); with ``embedding`` also the fused embedding ``(n, embed_dim)``. ``mc_seed`` fixes the
        MC-dropout masks (the same for every window, so a window's outputs do not depend on the batch).
        """
        device = next(self.model.parameters()).device
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(x), batch_size):
            chunk = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
            out = self.model.forecast(chunk, mc_samples=mc_samples, mc_means=mc_means, mc_seed=mc_seed)
            if not embedding:
                out.pop("embedding", None)
            for key, value in out.items():
                chunks.setdefault(key, []).append(value.float().cpu().numpy())
        if not chunks:
            return {"probs": np.empty((0, 3), np.float32), "expected_return": np.empty(0, np.float32)}
        return {key: np.concatenate(parts) for key, parts in chunks.items()}

    def window_from_bars(self, bars: pd.DataFrame) -> np.ndarray:
        """The scaled input window ``(1, lookback, n_features)`` ending at the LAST of ONE symbol's bars.

        Raises:
            InsufficientDataError: fewer than :attr:`min_bars` bars.
        """
        if len(bars) < self.min_bars:
            raise InsufficientDataError(
                f"need at least {self.min_bars} bars (feature warm-up {warmup_bars(self.features)} + "
                f"lookback {self.lookback}), got {len(bars)}"
            )
        feats = compute_features(bars, self.features).iloc[-self.lookback :]
        return self.scaler.transform_array(feats)[None]

    def predict(self, bars: pd.DataFrame) -> dict[str, Any]:
        """pyfunc entry point (MLflow): :meth:`forecast_bars`."""
        return self.forecast_bars(bars)

    def forecast_bars(self, bars: pd.DataFrame) -> dict[str, Any]:
        """Forecast from the last bar of ONE symbol's validated bars.

        Returns ``{"probs": {"sell", "hold", "buy"}, "expected_return", "signal", "confidence",
        "horizon_bars"}``; ``signal`` is the most probable class, ``confidence`` its probability.
        """
        out = self.forecast_windows(self.window_from_bars(bars))
        return self.describe(out["probs"][0], out["expected_return"][0])

    def describe(self, probs: np.ndarray, expected_return: float) -> dict[str, Any]:
        """One forecast as JSON-ready values: ``probs`` by class name, ``expected_return`` (log units over
        ``horizon_bars``), ``signal`` (most probable class) and ``confidence`` (its probability)."""
        k = int(np.argmax(probs))
        return {
            "probs": {name: float(p) for name, p in zip(CLASS_NAMES, probs, strict=True)},
            "expected_return": float(expected_return),
            "signal": CLASS_NAMES[k],
            "confidence": float(probs[k]),
            "horizon_bars": self.labels.horizon,
        }


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively, so kwargs survive a JSON round trip unchanged."""
    return json.loads(json.dumps(value))


def bundle_metadata(scaler: FeatureScaler, features: FeatureConfig, labels: LabelConfig, lookback: int,
                    mc_samples: int = 0) -> dict[str, Any]:
    """The JSON-ready part of ``bundle.json`` that does not depend on the weights (Ray Train checkpoints
    add ``model_name``, ``model_kwargs``, ``epoch`` and ``metrics`` to it)."""
    return {"scaler": scaler.to_dict(), "features": features.model_dump(mode="json"),
            "labels": labels.model_dump(mode="json"), "lookback": int(lookback), "mc_samples": int(mc_samples)}


def load_bundle(directory: str) -> ForecasterBundle:
    """Loader used by the MLflow pyfunc wrapper (``raytrade.models.bundle:load_bundle``)."""
    return ForecasterBundle.load(directory)


def signal_positions(probs: np.ndarray, max_position: float = 1.0) -> np.ndarray:
    """Forecaster signal strategy: target position = P(buy) - P(sell), scaled by ``max_position``.

    ``probs`` (n, 3) [sell, hold, buy] -> positions (n,) in [-max_position, max_position].
    """
    return np.clip((probs[:, 2] - probs[:, 0]) * max_position, -max_position, max_position)
