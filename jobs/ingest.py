"""Ray job: ingest bars into a partitioned Parquet store (<output>/symbol=<SYMBOL>/part-*.parquet).

From files: data.path (a file, directory or glob of CSV/Parquet; --data overrides), validated under
data.policy (fail: nothing is written on a broken rule; drop: bad rows left out and counted; repair: gaps
filled too, flagged). From an exchange through ccxt: --exchange binance --symbols BTC/USDT,ETH/USDT
--timeframe 1h --since 2024-01-01 (each symbol resumes from its last stored bar).

    python jobs/ingest.py --config jobs/configs/smoke.yaml --output runs/bars [--set data.policy=drop]
    raytrade submit ingest --address http://<head>:8265 --config jobs/configs/demo.yaml --set ... [--follow]
"""

import pandas as pd

from raytrade.data.exchange import ingest_exchange, make_exchange
from raytrade.data.ingest import ingest_files
from raytrade.errors import ConfigError
from raytrade.runtime import job_arguments, job_errors


def exchange_options(parser):
    parser.add_argument("--output", default=None, help="store root (default: <output_dir>/bars)")
    parser.add_argument("--exchange", default=None, help="ccxt exchange id, e.g. binance (instead of data.path)")
    parser.add_argument("--symbols", default=None, help="comma-separated exchange symbols, e.g. BTC/USDT,ETH/USDT")
    parser.add_argument("--timeframe", default="1h", help="exchange bar interval, e.g. 1m, 1h, 1d")
    parser.add_argument("--since", default=None, help="first bar (UTC, ISO) for a symbol the store lacks")


with job_errors():
    args = job_arguments(__doc__, add=exchange_options)
    config = args.config
    output = args.output or config.output_dir / "bars"
    if args.exchange:
        symbols = [s.strip() for s in (args.symbols or "").split(",") if s.strip()]
        if not symbols or not args.since:
            raise ConfigError("ingest: --exchange needs --symbols and --since")
        written = ingest_exchange(make_exchange(args.exchange), symbols, args.timeframe, output,
                                  since=pd.Timestamp(args.since, tz="UTC"))
        for symbol, n in written.items():
            print(f"{symbol}: {n} new bars -> {output}")
    else:
        done = ingest_files(args.data or config.data.path, output, config.data.policy, config.data.symbol)
        print(f"wrote {done['bars']} bars of {done['symbols']} symbol(s) to {output}: {done['dropped']} rows "
              f"dropped, {done['inserted']} gap bars inserted, {done['warnings']} warning(s)")
