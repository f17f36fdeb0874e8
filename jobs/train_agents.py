"""Ray job: train the RL agents of rl.agents (RLlib PPO/SAC/TD3, stable-baselines3) in parallel on Ray on the
champion forecaster's outputs, register them in MLflow and backtest them with the ensembles on the test split;
writes <run dir>/agents.json and report.html.

    python jobs/train_agents.py --config jobs/configs/smoke.yaml [--data PATH] [--set SECTION.FIELD=VALUE ...]
    raytrade submit train_agents --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.agents import run_agents

with job_errors():
    args = job_arguments(__doc__)
    report = run_agents(args.config, args.data)
print(report["backtest"]["table"])
print(f"report: {report['run_dir']}/agents.json")
