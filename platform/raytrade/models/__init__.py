"""Forecaster networks (``nn.Module``: CNN+LSTM hybrid and baselines), the name -> class registry, and the
model bundle (weights + train-only scaler + feature config: the one artifact training writes and serving loads)."""

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
