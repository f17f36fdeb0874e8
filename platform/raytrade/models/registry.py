"""Name -> model class registry, so configs and saved checkpoints refer to models by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from raytrade.config import ModelConfig
from raytrade.errors import ConfigError
from raytrade.models.base import ForecasterBase
from raytrade.models.baselines import GRUForecaster, LinearForecaster, LSTMForecaster, TransformerForecaster
from raytrade.models.cnn_lstm import CNNLSTMForecaster

MODELS: dict[str, type[ForecasterBase]] = {
    "cnn_lstm": CNNLSTMForecaster,
    "lstm": LSTMForecaster,
    "gru": GRUForecaster,
    "transformer": TransformerForecaster,
    "linear": LinearForecaster,
}


def _model_class(name: str) -> type[ForecasterBase]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered model from constructor kwargs. Raises ConfigError for an unknown name."""
    return _model_class(name)(**kwargs)


def model_kwargs_from_config(cfg: ModelConfig, n_features: int, return_scale: float) -> dict[str, Any]:
    """JSON-serialisable constructor kwargs of ``cfg.name``'s class (what checkpoints/bundles store).

    Raises:
        ConfigError: unknown ``cfg.name``.
    """
    return _model_class(cfg.name).kwargs_from_config(cfg, n_features, return_scale)


def build_from_config(cfg: ModelConfig, n_features: int, return_scale: float) -> nn.Module:
    """The network ``cfg.name`` built from the config (see :func:`model_kwargs_from_config`)."""
    return build_model(cfg.name, **model_kwargs_from_config(cfg, n_features, return_scale))
