"""Forecaster networks (``nn.Module`` only) and the name -> class registry."""

from raytrade.models.cnn_lstm import CNNLSTMForecaster
from raytrade.models.registry import MODELS, build_model

__all__ = ["MODELS", "CNNLSTMForecaster", "build_model"]
