"""Ray job: the FinRL ensemble protocol (Yang et al., ICAIF 2020) on a universe, over seeds: quarterly retraining
of every agent on a growing window, the best validation Sharpe trades the next quarter, the turbulence rule, costs;
baselines and bootstrap intervals. Writes <output_dir>/<name>-finrl-<stamp>/finrl_protocol.{json,md}, metrics.json.

    python jobs/finrl_protocol.py --config jobs/configs/finrl_dow30.yaml [--seeds 3] [--set SECTION.FIELD=VALUE ...]
    raytrade submit finrl_protocol --address http://<head>:8265 --config jobs/configs/finrl_dow30.yaml \\
        --set finrl.seeds=3 [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.finrl import run_finrl_protocol

with job_errors():
    args = job_arguments(__doc__, add=lambda p: p.add_argument(
        "--seeds", type=int, default=None, help="run the whole protocol this many times (default finrl.seeds)"))
    report = run_finrl_protocol(args.config, args.data, seeds=args.seeds)
print(report["table_markdown"])
print(f"metrics sha256: {report['metrics_sha256']}")
print(f"report: {report['run_dir']}/finrl_protocol.json")
