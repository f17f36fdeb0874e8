"""Ray job: Ray Tune (Optuna + ASHA) over the forecaster; the best configuration is retrained,
registered, and promoted to champion only if it beats the current one on validation.

    python jobs/tune_forecaster.py --config jobs/configs/demo.yaml [--data PATH]
    raytrade submit tune_forecaster --address http://<head>:8265 --config jobs/configs/demo.yaml
"""

import argparse

from raytrade.config import load_config
from raytrade.stages.tuning import run_tune

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True, help="pipeline YAML, e.g. jobs/configs/smoke.yaml")
parser.add_argument("--data", default=None, help="override data.path")
args = parser.parse_args()

config = load_config(args.config)
report = run_tune(config, args.data)
print(f"report: {report['run_dir']}/tune.json")
