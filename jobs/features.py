"""Ray job: causal features + labels of every symbol of data.path, computed per symbol in parallel with
Ray Data (features.*, labels.*), validated under data.policy; writes <output>/features.parquet (timestamp,
symbol, unscaled feature columns, label_* columns).

    python jobs/features.py --config jobs/configs/smoke.yaml [--data PATH] [--output DIR] [--set ...]
    raytrade submit features --address http://<head>:8265 --config jobs/configs/demo.yaml [--follow]
"""

from raytrade.runtime import job_arguments, job_errors
from raytrade.stages.common import new_run_dir
from raytrade.stages.features import write_features


def output_option(parser):
    parser.add_argument("--output", default=None, help="directory (default: a new <output_dir>/<name>-features-*)")


with job_errors():
    args = job_arguments(__doc__, add=output_option)
    config = args.config
    done = write_features(config, args.data or config.data.path, args.output or new_run_dir(config, "features"))
print(f"wrote {done['path']}: {done['rows']} rows x {done['columns']} columns of {len(done['symbols'])} symbol(s)")
