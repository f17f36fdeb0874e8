"""Ray job: expanding-window walk-forward evaluation of the forecaster and baselines (bootstrap CIs).

    python jobs/walk_forward.py --config jobs/configs/demo.yaml [--data PATH]
    raytrade submit walk_forward --address http://<head>:8265 --config jobs/configs/demo.yaml
"""

import argparse

from raytrade.config import load_config
from raytrade.stages.walkforward import run_walk_forward

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True, help="pipeline YAML, e.g. jobs/configs/smoke.yaml")
parser.add_argument("--data", default=None, help="override data.path")
args = parser.parse_args()

config = load_config(args.config)
report = run_walk_forward(config, args.data)
print(f"report: {report['run_dir']}/walk_forward.json")
