"""Ray Train for the forecaster: the per-worker training loop and its typed ``LoopConfig`` (``loop``), the trainer
builder (ScalingConfig, checkpoints, failure handling; ``trainer``) and the Ray Tune search (Optuna + ASHA;
``search``)."""
