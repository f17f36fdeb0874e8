"""Ray job: backtest the REGISTERED champion forecaster and agents (no training) on the test split after costs;
writes <run dir>/backtest.json and report.html.

    python jobs/backtest.py --config jobs/configs/smoke.yaml [--data PATH] [--set SECTION.FIELD=VALUE ...]
    raytrade submit backtest --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.backtest import run_backtest

with job_errors():
    args = job_arguments(__doc__)
    report = run_backtest(args.config, args.data)
print(report["backtest"]["table"])
print(f"report: {report['run_dir']}/backtest.json")
