"""Causal per-symbol technical features (TA-Lib), the cross-asset columns, and the train-only scaler; the
same code runs in training and serving. Depends on :mod:`raytrade.data`, never the reverse."""

from raytrade.features.scaler import FeatureScaler
from raytrade.features.technical import compute_features, feature_columns, feature_set_version, warmup_bars

__all__ = ["FeatureScaler", "compute_features", "feature_columns", "feature_set_version", "warmup_bars"]
