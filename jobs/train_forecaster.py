"""Ray job: Train the forecaster with Ray Train and register it in MLflow.

    python jobs/train_forecaster.py --config jobs/configs/demo.yaml [--data PATH]
    raytrade submit train_forecaster --address http://<head>:8265 --config jobs/configs/demo.yaml
"""

import argparse

from raytrade.config import load_config
from raytrade.stages.forecaster import run_train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True, help="pipeline YAML, e.g. jobs/configs/smoke.yaml")
parser.add_argument("--data", default=None, help="override data.path")
args = parser.parse_args()

config = load_config(args.config)
report = run_train(config, args.data)
print(f"report: {report['run_dir']}/train.json")
