"""Forecaster networks (``nn.Module`` only) and the name -> class registry."""

from raytrade.models.base import ForecasterBase
from raytrade.models.baselines import GRUForecaster, LinearForecaster, LSTMForecaster, TransformerForecaster
from raytrade.models.cnn_lstm import CNNLSTMForecaster
from raytrade.models.registry import MODELS, build_from_config, build_model, model_kwargs_from_config

__all__ = [
    "MODELS",
    "CNNLSTMForecaster",
    "ForecasterBase",
    "GRUForecaster",
    "LSTMForecaster",
    "LinearForecaster",
    "TransformerForecaster",
    "build_from_config",
    "build_model",
    "model_kwargs_from_config",
]
