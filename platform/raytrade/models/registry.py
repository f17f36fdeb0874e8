"""Name -> model class registry, so configs and saved checkpoints refer to models by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from raytrade.errors import ConfigError
from raytrade.models.cnn_lstm import CNNLSTMForecaster

MODELS: dict[str, type[nn.Module]] = {"cnn_lstm": CNNLSTMForecaster}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered model. Raises ConfigError for an unknown name."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return cls(**kwargs)
