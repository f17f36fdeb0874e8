"""Same config, same data, same seed -> the same report: ``raytrade agents`` run twice on CPU gives byte-identical
strategy metrics (README "Reproducibility").

RLlib PPO, SAC and TD3 and an SB3 agent train twice as parallel Ray tasks in one Ray instance (the second run lands
its agents on Ray worker processes the first run left behind, in another order), with ``rolling_retrain`` so the
agents also retrain in rebuilt envs. Before the fix SAC's replay sampling was seeded from OS entropy, so its row
(and the ensembles built on it) differed between the two runs.
"""

from __future__ import annotations

import json

import pytest

from conftest import BUNDLED, REPO


# about 2 minutes on 2 cores: a linear forecaster, then four agents twice (make test-slow; CI runs it)
@pytest.mark.slow
def test_agents_stage_twice_gives_byte_identical_strategy_metrics(ray_local, tmp_path):
    from raytrade.config import load_config
    from raytrade.stages.agents import run_agents

    cfg = load_config(REPO / "jobs" / "configs" / "smoke.yaml", overrides={
        "output_dir": str(tmp_path),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "data": {"path": str(BUNDLED), "max_bars": 1500},
        "model": {"name": "linear"},
        "train": {"epochs": 1},
        "rl": {"agents": ["ppo", "sac", "td3", "sb3_sac"], "iterations": 2, "train_batch_size": 200,
               "minibatch_size": 50, "learning_starts": 50, "episode_length": 100, "hidden": [16, 16],
               "cpus_per_agent": 0.5},
        "ensemble": {"methods": ["rolling", "rolling_retrain", "vote"]},
    })
    # the first run trains and registers the forecaster, the second loads it (@champion): same weights
    first, second = run_agents(cfg), run_agents(cfg)

    def histories(report: dict) -> dict:  # everything but wall-clock seconds
        return {name: [{k: v for k, v in row.items() if k != "seconds"} for row in m["history"]]
                for name, m in report["rl_metrics"].items()}

    a, b = histories(first), histories(second)
    trained = {name: (a[name], b[name]) for name in a if a[name] != b.get(name)}  # the agents that diverged
    differ = [name for name in first["strategies"]
              if json.dumps(first["strategies"][name]) != json.dumps(second["strategies"].get(name))]
    assert json.dumps(first["strategies"]) == json.dumps(second["strategies"]), (
        f"strategy metrics differ between two identical runs: {differ}; agents' histories: {trained}")
    assert json.dumps(a) == json.dumps(b), f"agents' training histories differ: {trained}"
    assert json.dumps(first["backtest"], default=str) == json.dumps(second["backtest"], default=str), (
        "the backtest block (ensemble windows, validation Sharpes) differs")
