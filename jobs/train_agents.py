"""Ray job: train the RL agents (RLlib PPO/SAC/TD3, stable-baselines3) in parallel, register them in MLflow,
and backtest them with the ensembles on the test split.

    python jobs/train_agents.py --config jobs/configs/demo.yaml [--data PATH]
    raytrade submit train_agents --address http://<head>:8265 --config jobs/configs/demo.yaml
"""

import argparse

from raytrade.config import load_config
from raytrade.stages.agents import run_agents

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True, help="pipeline YAML, e.g. jobs/configs/smoke.yaml")
parser.add_argument("--data", default=None, help="override data.path")
args = parser.parse_args()

config = load_config(args.config)
report = run_agents(config, args.data)
print(report["backtest"]["table"])
print(f"report: {report['run_dir']}/agents.json")
