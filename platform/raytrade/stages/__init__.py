"""Stand-alone stages (train, tune, walk-forward): one linear ``run_<stage>(cfg)`` each, used by the CLI and jobs/."""
