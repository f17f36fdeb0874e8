"""Ray job: the whole pipeline, read top to bottom.

    python jobs/pipeline.py --config jobs/configs/demo.yaml [--data PATH]
    raytrade submit pipeline --address http://<head>:8265 --config jobs/configs/demo.yaml
"""

import argparse

from raytrade.config import load_config
from raytrade.pipeline import run_pipeline

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True)
parser.add_argument("--data", default=None)
args = parser.parse_args()

config = load_config(args.config)
report = run_pipeline(config, args.data)
print(f"report: {report['run_dir']}/report.json")
