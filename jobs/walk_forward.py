"""Ray job: expanding-window walk-forward evaluation of the forecaster and the baselines (walk_forward.models),
with bootstrap confidence intervals; writes <run dir>/walk_forward.{json,md}.

    python jobs/walk_forward.py --config jobs/configs/smoke.yaml [--data PATH] [--set SECTION.FIELD=VALUE ...]
    raytrade submit walk_forward --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.walk_forward import run_walk_forward

with job_errors():
    args = job_arguments(__doc__)
    report = run_walk_forward(args.config, args.data)
print(report["table_markdown"])
print(f"report: {report['run_dir']}/walk_forward.json")
