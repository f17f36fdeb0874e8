"""``raytrade`` console script: one subcommand per stage, plus ``pipeline`` and ``submit``.

Errors a user can cause (bad data, bad config, missing model) print ONE line to stderr and exit
with status 1; ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from raytrade.errors import RaytradeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="raytrade: OHLCV bars in, served trading decisions out (Ray Data/Train/RLlib/Serve).")

InputOpt = Annotated[Path, typer.Option("--input", "-i", help="OHLCV file: .parquet or .csv (Yahoo layout ok)")]
SymbolOpt = Annotated[
    str | None, typer.Option(help="symbol to keep (multi-symbol files) or to assign (files without one)")
]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    """raytrade command line."""


@app.command()
def validate(
    input: Annotated[str, typer.Option("--input", "-i", help="file, directory or glob of CSV/Parquet bars")],
    symbol: SymbolOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    outlier_mad: Annotated[float, typer.Option(help="outlier threshold in robust std (MAD) units")] = 12.0,
) -> None:
    """Check every rule for every symbol and print the report (errors and warnings).

    Exits 0 when no error-level rule is broken (warnings such as gaps are reported only); otherwise
    prints the first error on one line to stderr and exits 1.
    """
    import json

    from raytrade.data.ingest import read_many
    from raytrade.data.validation import validate as validate_report

    bars = read_many(input, symbol)
    report = validate_report(bars, outlier_mad=outlier_mad)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        typer.echo(f"{input}: {report.n_rows} bars, {len(report.symbols)} symbol(s)")
        typer.echo(report.format_table())
    report.raise_first()
    if not json_out:
        typer.echo(f"ok: no errors ({len(report.warnings())} warning(s))")


@app.command()
def ingest(
    output: Annotated[Path, typer.Option("--output", "-o", help="partitioned Parquet store (symbol=.../)")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="file, directory or glob of CSV/Parquet")] = None,
    exchange: Annotated[str | None, typer.Option(help="ccxt exchange id, e.g. binance")] = None,
    symbols: Annotated[str | None, typer.Option(help="comma-separated symbols, e.g. BTC/USDT,ETH/USDT")] = None,
    timeframe: Annotated[str, typer.Option(help="exchange bar interval, e.g. 1m, 1h, 1d")] = "1h",
    since: Annotated[str | None, typer.Option(help="first bar (UTC, ISO) when the store has none")] = None,
    symbol: SymbolOpt = None,
    policy: Annotated[str, typer.Option(help="fail | drop | repair bad rows before writing")] = "fail",
) -> None:
    """Normalise files (or download from an exchange via ccxt) into a partitioned Parquet store.

    Files are validated first under ``--policy`` (fail: any error stops the ingest and nothing is written;
    drop: rows breaking a rule are left out, and counted; repair: also fills intraday gaps, flagged in a
    ``repaired`` column). The exchange download resumes from the last stored bar of each symbol.
    """
    import pandas as pd

    from raytrade.data.ingest import ingest_files

    if (input is None) == (exchange is None):
        raise RaytradeError("ingest: give exactly one of --input or --exchange")
    if policy not in ("fail", "drop", "repair"):
        raise RaytradeError(f"ingest: --policy must be fail, drop or repair, got {policy!r}")
    if input is not None:
        done = ingest_files(input, output, policy, symbol)  # type: ignore[arg-type]
        typer.echo(f"wrote {done['bars']} bars of {done['symbols']} symbol(s) to {output} ({len(done['files'])} "
                   f"files); policy {policy}: {done['dropped']} rows dropped, {done['inserted']} gap bars inserted "
                   f"(flagged 'repaired'), {done['warnings']} warning(s)")
        return
    from raytrade.data.exchange import ingest_exchange, make_exchange

    if not symbols or not since:
        raise RaytradeError("ingest: --exchange needs --symbols and --since")
    client = make_exchange(exchange)
    written = ingest_exchange(client, [s.strip() for s in symbols.split(",") if s.strip()], timeframe, output,
                              since=pd.Timestamp(since, tz="UTC"))
    for sym, n in written.items():
        typer.echo(f"{sym}: {n} new bars -> {output}")


@app.command()
def features(
    input: Annotated[str, typer.Option("--input", "-i", help="file, directory or glob of CSV/Parquet bars")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory for features.parquet")],
    config: Annotated[Path | None, typer.Option(help="pipeline YAML for feature/label settings")] = None,
    symbol: SymbolOpt = None,
    redis_url: Annotated[str | None, typer.Option(help="also write each symbol's latest window to Redis")] = None,
) -> None:
    """Write unscaled causal features + label_* columns (Parquet) computed per symbol with Ray Data.

    With ``--redis-url`` the latest window of every symbol (lookback rows of features + the raw bars to
    update them) goes to the online feature store too, keyed by feature-set version and symbol.
    """
    from raytrade.config import PipelineConfig, load_config
    from raytrade.stages.features import write_features

    cfg = load_config(config) if config else PipelineConfig()
    done = write_features(cfg, input, output, symbol, redis_url)
    if done["store"]:
        typer.echo(f"online store: {len(done['store']['keys'])} window(s) at {redis_url}, "
                   f"feature set {done['store']['version']}")
    typer.echo(f"wrote {done['path']}: {done['rows']} rows x {done['columns']} columns "
               f"({done['warmup_rows_dropped']} warm-up rows without defined features left out)")


ConfigOpt = Annotated[Path, typer.Option(help="pipeline YAML, e.g. jobs/configs/demo.yaml")]
DataOpt = Annotated[Path | None, typer.Option(help="override data.path")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a config field: --set train.epochs=2, --set output_dir=/tmp/runs (YAML value; repeatable)")]


def _load(config: Path, overrides: list[str] | None):
    """Load the config with ``section.field=value`` overrides (values parsed as YAML)."""
    from raytrade.config import load_config, parse_overrides

    return load_config(config, parse_overrides(overrides))


@app.command()
def pipeline(config: ConfigOpt, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Run every stage end to end and write <run dir>/report.json."""
    from raytrade.pipeline import run_pipeline

    report = run_pipeline(_load(config, set_), data)
    typer.echo(f"report: {report['run_dir']}/report.json")


@app.command()
def train(config: ConfigOpt, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Train the forecaster with Ray Train (model.name picks the network), register it in MLflow
    (alias tracking.alias) and write <run dir>/train.json."""
    from raytrade.stages.forecaster import run_train

    report = run_train(_load(config, set_), data)
    typer.echo(f"report: {report['run_dir']}/train.json")


@app.command()
def tune(config: ConfigOpt, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Ray Tune (Optuna + ASHA) over the forecaster; retrain and register the best configuration, which
    becomes the champion only if it beats the current one on validation. Writes <run dir>/tune.json."""
    from raytrade.stages.tuning import run_tune

    report = run_tune(_load(config, set_), data)
    typer.echo(report["verdict"])
    typer.echo(f"report: {report['run_dir']}/tune.json")


@app.command()
def agents(config: ConfigOpt, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Train the RL agents of rl.agents (RLlib ppo/sac/td3, SB3 sb3_<algo>) in parallel on Ray, on the
    registered champion forecaster's outputs (one is trained if none fits); register each policy; backtest
    every agent, the ensembles, the forecaster and buy-and-hold on the test split. Writes <run dir>/agents.json."""
    from raytrade.stages.agents import run_agents

    report = run_agents(_load(config, set_), data)
    typer.echo(report["backtest"]["table"])
    typer.echo(f"report: {report['run_dir']}/agents.json")


@app.command()
def backtest(config: ConfigOpt, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Backtest the REGISTERED champion forecaster and agents (no training) on the test split after costs:
    buy-and-hold, the forecaster signal, each agent and the ensembles. Writes <run dir>/backtest.json and
    report.html (figures embedded)."""
    from raytrade.stages.backtest import run_backtest

    report = run_backtest(_load(config, set_), data)
    typer.echo(report["backtest"]["table"])
    typer.echo(f"report: {report['run_dir']}/backtest.json")


@app.command("walk-forward")
def walk_forward(config: ConfigOpt, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Expanding-window walk-forward evaluation of the forecaster and the baselines (walk_forward.models),
    with bootstrap confidence intervals; prints the table and writes <run dir>/walk_forward.{json,md}."""
    from raytrade.stages.walk_forward import run_walk_forward

    report = run_walk_forward(_load(config, set_), data)
    typer.echo(report["table_markdown"])
    typer.echo(f"report: {report['run_dir']}/walk_forward.json")


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="Serve config file")] = Path("serve_configs/ensemble.yaml"),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the registry")] = None,
    deploy: Annotated[bool, typer.Option("--deploy", help="deploy onto a running cluster (like `serve deploy`) "
                                                          "and return, instead of serving locally")] = False,
    address: Annotated[str, typer.Option(help="Ray dashboard address for --deploy")] = "http://127.0.0.1:8265",
) -> None:
    """Serve the ensemble app: locally until Ctrl-C (like ``serve run``), or ``--deploy`` the config file onto a
    running cluster through Ray's REST API (like ``serve deploy``; a changed ``user_config`` updates the
    running replicas without restarting them)."""
    from raytrade.serving.deploy import deploy_to_cluster, serve_locally

    if deploy:
        names = ", ".join(deploy_to_cluster(config, address, tracking_uri))
        typer.echo(f"deployed {names} from {config} to {address} (check: serve status --address {address})")
        return
    serve_locally(config, tracking_uri, echo=typer.echo)


@app.command()
def submit(
    job: Annotated[str, typer.Argument(help="job name: jobs/<JOB>.py, e.g. pipeline, train_forecaster")],
    address: Annotated[str, typer.Option(help="Ray dashboard (Jobs API) address, e.g. http://head:8265")],
    config: Annotated[Path, typer.Option(help="job config")] = Path("jobs/configs/demo.yaml"),
    set_: SetOpt = None,
    data: Annotated[str | None, typer.Option(help="override data.path (a path on the cluster)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream the job's logs until it ends; exit "
                                                                "non-zero unless it SUCCEEDED")] = False,
    runtime_env: Annotated[Path, typer.Option(help="Ray runtime environment YAML")] = Path("jobs/runtime_env.yaml"),
) -> None:
    """Submit jobs/<JOB>.py to a Ray cluster through its Jobs API, with this checkout as the working dir
    (see jobs/runtime_env.yaml). Run from the repository root."""
    from raytrade.submission import submit_job

    _, status = submit_job(job, address, config, set_, data=data, runtime_env=runtime_env, follow=follow,
                           echo=lambda text: typer.echo(text, nl=False))
    if status is not None and status != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def cluster(
    action: Annotated[str, typer.Argument(help="up | down | status | add-worker | kill")],
    name: Annotated[str | None, typer.Argument(help="kill: the process to lose (worker-1, mlflow, ...)")] = None,
    workdir: Annotated[Path, typer.Option(help="the cluster's directory (state, logs, MLflow store)")] = Path(
        ".cluster"),
    workers: Annotated[int, typer.Option(help="worker nodes (up)")] = 1,
    worker_cpus: Annotated[int, typer.Option(help="CPUs of each worker node (up)")] = 1,
) -> None:
    """A multi-node Ray cluster on this machine (raytrade.localcluster): a head and worker nodes (`ray start`), an
    MLflow tracking server and Redis, with Ray's token authentication on. `up` prints where each answers; `down`
    stops them all; `kill NAME` loses one process at once (SIGKILL: a failure drill); `add-worker` starts another
    worker node."""
    import json
    from dataclasses import asdict

    from raytrade.errors import ConfigError
    from raytrade.localcluster import add_worker_node, load_local_cluster, start_local_cluster, stop_local_cluster
    from raytrade.rayauth import token_source

    if action == "up":
        found = load_local_cluster(workdir) if (workdir / "cluster.json").is_file() else None
        if found is not None:
            raise ConfigError(f"cluster up: {workdir} already records a cluster (dashboard {found.dashboard}); "
                              "run `raytrade cluster down` first")
        info = start_local_cluster(workdir, workers=workers, worker_cpus=worker_cpus)
        typer.echo(json.dumps(asdict(info), indent=2))
        typer.echo(f"Ray token authentication: on; the token is in {token_source()}")
        typer.echo(f"export RAY_ADDRESS={info.gcs_address} MLFLOW_TRACKING_URI={info.tracking_uri} "
                   f"RAY_AUTH_MODE=token\n"
                   f"raytrade submit pipeline --address {info.dashboard} --config jobs/configs/smoke.yaml "
                   f"--set tracking.uri={info.tracking_uri} --set store.url={info.redis_url}")
    elif action == "down":
        typer.echo("stopped: " + ", ".join(stop_local_cluster(workdir)))
    elif action == "status":
        typer.echo(json.dumps(asdict(load_local_cluster(workdir)), indent=2))
    elif action == "add-worker":
        typer.echo("started: " + add_worker_node(workdir))
    elif action == "kill":
        if name is None:
            raise ConfigError("cluster kill: name the process to lose, e.g. `raytrade cluster kill worker-1`")
        typer.echo("killed: " + ", ".join(stop_local_cluster(workdir, only=name, hard=True)))
    else:
        raise ConfigError(f"cluster: unknown action {action!r}; use up, down, status, add-worker or kill")


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="run directory, a run name under --runs, or 'latest'")] = "latest",
    runs: Annotated[Path, typer.Option(help="where runs land (the config's output_dir)")] = Path("runs"),
    open_: Annotated[bool, typer.Option("--open", help="open it in the web browser")] = False,
) -> None:
    """Print the path of a run's self-contained HTML report (report.html); --open opens it."""
    from raytrade.evaluation.html_report import find_report

    path = find_report(run, runs)
    typer.echo(str(path))
    if open_:
        import webbrowser

        webbrowser.open(path.as_uri())


def main() -> None:
    """Console-script entry point: one-line errors unless ``--debug`` (accepted anywhere)."""
    argv = sys.argv[1:]
    debug = "--debug" in argv
    try:
        app(args=[a for a in argv if a != "--debug"], prog_name="raytrade")
    except RaytradeError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
