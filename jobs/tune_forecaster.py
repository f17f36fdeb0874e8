"""Ray job: Ray Tune (Optuna + ASHA) over the forecaster; the best configuration is retrained, registered, and
promoted to champion only if it beats the current one on validation; writes <run dir>/tune.json.

    python jobs/tune_forecaster.py --config jobs/configs/smoke.yaml [--data PATH] [--set SECTION.FIELD=VALUE ...]
    raytrade submit tune_forecaster --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.tuning import run_tune

with job_errors():
    args = job_arguments(__doc__)
    report = run_tune(args.config, args.data)
print(report["verdict"])
print(f"report: {report['run_dir']}/tune.json")
