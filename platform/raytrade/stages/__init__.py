"""One linear ``run_<stage>(cfg)`` per stage (features, train, tune, walk-forward, agents, backtest), used by the
CLI and ``jobs/``, over the rooms below; ``common`` holds what stages share (run dirs, data summary, loading,
training + registering the forecaster, recording a backtest). Stages import no other stage but ``common``."""
