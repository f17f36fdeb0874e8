"""Ray job: every stage end to end, read top to bottom: bars -> features -> forecaster (Ray Train) -> RL agents
(RLlib, in parallel) -> ensemble backtest after costs -> Ray Serve; writes <run dir>/report.json and report.html.

    python jobs/pipeline.py --config jobs/configs/smoke.yaml [--data PATH] [--set SECTION.FIELD=VALUE ...]
    raytrade submit pipeline --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.pipeline import run_pipeline
from raytrade.runtime import job_arguments, job_errors

with job_errors():
    args = job_arguments(__doc__)
    report = run_pipeline(args.config, args.data)
print(f"report: {report['run_dir']}/report.json; HTML: {report['run_dir']}/report.html")
