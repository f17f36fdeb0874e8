"""Ray job: deploy the ensemble (serve.config, default serve_configs/ensemble.yaml) on the cluster with
Ray Serve, loading tracking.forecaster_model and the rl.agents policies @tracking.alias from the MLflow
registry (tracking.uri must be one the cluster reaches, e.g. an MLflow server or a shared path). The app
keeps running after the job ends; check it with `serve status`, stop it with `serve shutdown`.

    python jobs/deploy.py --config jobs/configs/demo.yaml [--set tracking.uri=http://mlflow:5000]
    raytrade submit deploy --address http://<head>:8265 --config jobs/configs/demo.yaml --follow
"""

import httpx

from raytrade.errors import ConfigError, RaytradeError
from raytrade.runtime import ensure_ray, job_arguments, job_errors
from raytrade.serving.deploy import deploy_ensemble

with job_errors():
    args = job_arguments(__doc__)
    if args.data:
        raise ConfigError("deploy: --data is not used: the app gets bars from requests or the online store")
    ensure_ray(args.config)
    url = deploy_ensemble(args.config)
    try:
        health = httpx.get(f"{url}/health", timeout=30).json()
    except httpx.HTTPError as exc:
        raise RaytradeError(f"deployed, but {url}/health did not answer: {exc}") from None
print(f"serving on {url}: {health}")
