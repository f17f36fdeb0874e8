"""Ray job: train the forecaster with Ray Train (CPU or GPU workers, train.*) and register it in MLflow
(alias tracking.alias); writes <run dir>/train.json.

    python jobs/train_forecaster.py --config jobs/configs/smoke.yaml [--data PATH] [--set SECTION.FIELD=VALUE ...]
    raytrade submit train_forecaster --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.forecaster import run_train

with job_errors():
    args = job_arguments(__doc__)
    report = run_train(args.config, args.data)
print(f"report: {report['run_dir']}/train.json")
