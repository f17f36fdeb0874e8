"""Model-ready data built from validated bars: forward-return labels, chronological splits with an embargo,
walk-forward folds, lookback windows ``(n, lookback, n_features)``, and the Ray Data pipeline that computes
features and labels per symbol in parallel (``preprocess``) and turns a config into train/val/test
(``prepare``)."""
