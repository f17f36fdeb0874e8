"""Ray Train loop and trainer builder for the forecaster (Ray Tune search comes later)."""
