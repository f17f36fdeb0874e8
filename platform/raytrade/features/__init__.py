"""Causal technical features (TA-Lib) and the train-only scaler; shared by training and serving."""

from raytrade.features.scaler import FeatureScaler
from raytrade.features.technical import compute_features, feature_columns, feature_set_version, warmup_bars

__all__ = ["FeatureScaler", "compute_features", "feature_columns", "feature_set_version", "warmup_bars"]
