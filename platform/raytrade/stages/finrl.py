"""The FinRL ensemble protocol on a universe, as one reproducible job (``jobs/finrl_protocol.py``).

Yang, Liu, Zhong, Walid, "Deep Reinforcement Learning for Automated Stock Trading: An Ensemble Strategy", ICAIF
2020 (Table II: the Dow 30, trading 2016-01-04 -> 2020-05-08). On the universe's calendar, with ``W`` =
``ensemble.window_bars`` (63 trading days, a quarter):

1. **Windows** (:func:`protocol_windows`): trade windows of ``W`` bars from the first bar on or after
   ``finrl.trade_start`` to the last bar that has a next bar; window ``k`` is validated on the ``W`` bars before
   it and its agents are trained on every bar before that (a growing window from the data's first bar).
2. **Features**: Ray Data's causal features per symbol and across the universe (the pipeline's own); the
   observation's ``rl.features`` columns are scaled with statistics of the bars before the FIRST validation window
   only, so no window's scaler has seen its validation or trading bars. No forecaster: the paper's state has none
   (``rl.forecast_inputs`` is ignored here).
3. **Agents** (:func:`raytrade.rl.agents.train_agent_runs`): every agent of every seed is one Ray task, all
   submitted at once. Each trains ``rl.iterations`` iterations on the bars before the first validation window
   (the iteration with the best Sharpe there is kept for window 1), then, before each later window, trains
   ``ensemble.retrain_iterations`` more iterations on all bars before that window's validation window
   (:class:`~raytrade.rl.agents.RetrainPlan`: weights, optimiser and replay buffer carried on, where FinRL
   retrains from scratch).
4. **Selection**: in window ``k`` every agent's window-``k`` policy is rolled through the validation window (fresh
   flat book, ``backtest.cost_bps`` costs); the best validation Sharpe (:func:`raytrade.rl.ensemble.best_member`,
   ties to the first listed) trades the window.
5. **Risk layer**: FinRL's turbulence rule (:func:`raytrade.rl.portfolio_risk.risk_limit_weights`): all cash on a
   bar whose turbulence index (``portfolio.turbulence_window`` trailing bars) exceeds the
   ``portfolio.turbulence_quantile`` of its values on the window's training bars; no drawdown cut (the paper has
   none). The ensemble and each single agent (its own window policies, every window) go through it; the
   baselines (equal-weight buy-and-hold, the index proxy; minimum variance) do not.
6. **Book**: one book over the whole trading period (:mod:`raytrade_envs.accounting`, fills at the next open,
   ``backtest.cost_bps`` per unit traded), so switching agents costs what it trades.

Metrics are :func:`raytrade.evaluation.metrics.summarize`'s (annualised with the calendar's bars per year); each
Sharpe has a stationary-bootstrap 95% interval (:func:`raytrade.evaluation.bootstrap.bootstrap_ci`,
``walk_forward.n_bootstrap`` resamples); over seeds, mean +- std (ddof 1) and the interval of the seeds' mean Sharpe
(the seeds' return series resampled with the same blocks). ``metrics.json`` holds only numbers that the config,
data and seeds determine: two runs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import TIMESTAMP
from raytrade.errors import ConfigError, InsufficientDataError

__all__ = ["PAPER_TABLE_II", "ProtocolWindow", "protocol_windows", "run_finrl_protocol", "summary_table"]

#: Yang et al. 2020, Table II (2016-01-04 -> 2020-05-08): the figures this project quotes (fractions; Sharpe
#: annualised). Columns the paper reports that are not quoted here are left out rather than retyped from memory.
PAPER_TABLE_II: dict[str, dict[str, float]] = {
    "ensemble": {"total_return": 0.704, "sharpe": 1.30, "max_drawdown": 0.097},
    "DJIA": {"sharpe": 0.47},
}

#: the metrics of every strategy in the report (keys of :func:`raytrade.evaluation.metrics.summarize` and
#: :class:`~raytrade.evaluation.portfolio.PortfolioResult`)
METRICS = ("total_return", "annual_return", "annual_volatility", "sharpe", "max_drawdown", "sortino", "calmar",
           "turnover", "avg_gross_exposure", "costs_paid")


@dataclass(frozen=True)
class ProtocolWindow:
    """One window of the protocol, in calendar rows (decisions at rows ``[start, stop)`` of each part).

    Attributes:
        k: window number from 0.
        val_start: first validation decision; the agents of this window train on rows ``< val_start``.
        trade_start: first trading decision (= the validation's stop).
        trade_stop: exclusive end of the trading decisions (the next window's ``trade_start``, or the last row
            that has a next bar + 1).
    """

    k: int
    val_start: int
    trade_start: int
    trade_stop: int

    def to_dict(self, stamps: pd.DatetimeIndex) -> dict[str, Any]:
        day = lambda row: stamps[row].date().isoformat()  # noqa: E731
        return {"window": self.k + 1, "train_end": day(self.val_start - 1), "val_start": day(self.val_start),
                "val_end": day(self.trade_start - 1), "trade_start": day(self.trade_start),
                "trade_end": day(self.trade_stop - 1), "trade_bars": self.trade_stop - self.trade_start}


def protocol_windows(stamps: pd.DatetimeIndex, trade_start: str, window_bars: int, first_row: int,
                     min_train_bars: int) -> list[ProtocolWindow]:
    """The protocol's windows on a calendar (module docstring, step 1).

    Args:
        stamps: ``(T,)`` the calendar's bar timestamps (UTC, increasing).
        trade_start: ``finrl.trade_start``, a date; the first trade window starts at the first bar on or after it.
        window_bars: ``ensemble.window_bars`` (bars per window; validation windows have as many).
        first_row: the first row an agent may train on (features warmed up).
        min_train_bars: the fewest training rows window 1 may have (an env step needs ``rl.window + 1``).

    Returns:
        The windows in order; the last may be shorter than ``window_bars``. Rows ``[0, T - 1)`` only: the last row
        has no next bar to trade.

    Raises:
        ConfigError: ``trade_start`` is not a date.
        InsufficientDataError: no bar on or after ``trade_start`` has a next bar, or fewer than ``min_train_bars``
            rows lie before the first validation window.
    """
    try:
        start = pd.Timestamp(trade_start)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"finrl.trade_start: {trade_start!r} is not a date ({exc})") from None
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    last = len(stamps) - 1  # decisions stop before the last row
    s0 = int(stamps.searchsorted(start))
    if s0 >= last:
        raise InsufficientDataError(f"finrl.trade_start {start.date()}: no bar on or after it has a next bar (the "
                                    f"data ends {stamps[-1].date()})")
    v0 = s0 - window_bars
    if v0 - first_row < min_train_bars:
        raise InsufficientDataError(f"finrl.trade_start {start.date()}: {max(v0 - first_row, 0)} training bars before "
                                    f"the first validation window ({window_bars} bars), need {min_train_bars}")
    out, s, k = [], s0, 0
    while s < last:
        out.append(ProtocolWindow(k=k, val_start=s - window_bars, trade_start=s, trade_stop=min(s + window_bars,
                                                                                                 last)))
        s, k = s + window_bars, k + 1
    return out


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def _sharpe_ci(returns: np.ndarray, ppy: float, n_bootstrap: int) -> tuple[float, float, float]:
    """Point, low, high of the mean over columns of the annualised Sharpe of ``returns`` ``(T, n)`` (one column per
    seed), the rows resampled by the stationary bootstrap (:func:`~raytrade.evaluation.bootstrap.bootstrap_ci`)."""
    from raytrade.evaluation.bootstrap import bootstrap_ci
    from raytrade.rl.ensemble import sharpe_or_zero

    def mean_sharpe(r: np.ndarray) -> float:
        return float(np.mean([sharpe_or_zero(r[:, j], ppy) for j in range(r.shape[1])]))

    return bootstrap_ci(mean_sharpe, returns, n_bootstrap=n_bootstrap, seed=0)


def summary_table(summary: dict[str, dict[str, Any]], n_seeds: int) -> str:
    """The report's markdown table: FinRL Table II's columns plus Sortino and Calmar, mean +- std over seeds, the
    Sharpe's 95% interval; fractions shown in %."""
    head = ("| strategy | cumulative return | annual return | annual volatility | Sharpe | Sharpe 95% CI | "
            "max drawdown | Sortino | Calmar |")
    lines = [head, "|---|" + "---:|" * 8]

    def cell(stats: dict[str, float], pct: bool) -> str:
        scale, digits, unit = (100, 1, "%") if pct else (1, 2, "")
        mean, std = stats["mean"] * scale, stats["std"] * scale
        spread = f" ± {std:.{digits}f}" if n_seeds > 1 and std > 0 else ""
        return f"{mean:.{digits}f}{unit}{spread}"

    for name, row in summary.items():
        m = row["metrics"]
        low, high = row["sharpe_ci95"]
        ci = f"[{low:.2f}, {high:.2f}]" if math.isfinite(low) else "n/a"
        mdd = {"mean": -m["max_drawdown"]["mean"], "std": m["max_drawdown"]["std"]}
        lines.append(f"| {name} | {cell(m['total_return'], True)} | {cell(m['annual_return'], True)} | "
                     f"{cell(m['annual_volatility'], True)} | {cell(m['sharpe'], False)} | {ci} | {cell(mdd, True)} | "
                     f"{cell(m['sortino'], False)} | {cell(m['calmar'], False)} |")
    return "\n".join(lines)


def _market(cfg: PipelineConfig, universe: Any, progress: Any) -> dict[str, Any]:
    """Features (Ray Data), the windows, the scaled calendar arrays and the turbulence index."""
    from raytrade.dataset.prepare import labelled_features
    from raytrade.features.scaler import FeatureScaler
    from raytrade.rl.portfolio_decision import past_log_returns
    from raytrade.rl.portfolio_inputs import calendar_arrays
    from raytrade.rl.portfolio_risk import turbulence_index

    panel = universe.panel
    pre, _ = labelled_features(cfg, universe)
    frame = pre.frame
    names = list(cfg.rl.features) or list(pre.feature_columns)
    unknown = [n for n in names if n not in pre.feature_columns]
    if unknown:
        raise ConfigError(f"rl.features: unknown feature(s) {unknown}; see docs/FEATURES.md")
    first_row = int(panel.index_of(pd.DatetimeIndex([frame[TIMESTAMP].min()]))[0])  # the first feature row
    windows = protocol_windows(panel.timestamps, cfg.finrl.trade_start, cfg.ensemble.window_bars, first_row,
                               min_train_bars=max(cfg.rl.window + 2, cfg.portfolio.turbulence_window + 2))
    fit_end = panel.timestamps[windows[0].val_start]
    scaler = FeatureScaler(pre.feature_columns).fit(frame[frame[TIMESTAMP] < fit_end])
    arrays = calendar_arrays(cfg, panel, frame, scaler, names)
    for key in ("returns", "gap_returns"):  # the last row is never traded: it has no next bar
        arrays[key][-1] = np.where(np.isfinite(arrays[key][-1]), arrays[key][-1], 0.0)
    arrays["forecasts"] = None
    past = past_log_returns(panel.close)
    turbulence = turbulence_index(past, cfg.portfolio.turbulence_window, symbols=panel.symbols,
                                  index=panel.timestamps)
    progress.note(f"{len(names)} features x {len(panel.symbols)} assets in the observation, scaled on "
                  f"{int((frame[TIMESTAMP] < fit_end).sum())} feature rows before {fit_end.date()}; "
                  f"{len(windows)} trade windows of {cfg.ensemble.window_bars} bars "
                  f"{panel.timestamps[windows[0].trade_start].date()} -> "
                  f"{panel.timestamps[windows[-1].trade_stop - 1].date()}")
    return {"arrays": arrays, "names": [f"{s}/{n}" for s in panel.symbols for n in names], "windows": windows,
            "first_row": first_row, "past": past, "turbulence": turbulence, "fit_end": fit_end}


def _train(cfg: PipelineConfig, mk: dict[str, Any], seeds: list[int], ppy: float, run_dir: Path,
           progress: Any) -> dict[str, Any]:
    from raytrade.rl.agents import RetrainPlan, train_agent_runs
    from raytrade.rl.env import slice_env
    from raytrade.rl.portfolio_inputs import portfolio_env_kwargs

    windows, first, w = mk["windows"], mk["first_row"], cfg.rl.window
    n_cal = len(mk["arrays"]["returns"])
    train_all = portfolio_env_kwargs(cfg, mk["arrays"], train=True)
    eval_all = portfolio_env_kwargs(cfg, mk["arrays"], train=False)
    w0 = windows[0]
    train_env = slice_env(train_all, first, w0.val_start)
    val_env = slice_env(eval_all, w0.val_start - w + 1, w0.trade_start + 1)
    plan = None
    if len(windows) > 1:
        plan = RetrainPlan(env=slice_env(train_all, first, n_cal), iterations=cfg.ensemble.retrain_iterations,
                           ends=[win.val_start - first for win in windows[1:]])
    runs = {f"seed_{seed}/{name}": (name, cfg.rl.model_copy(update={"seed": seed}))
            for seed in seeds for name in cfg.rl.agents}
    outcomes = train_agent_runs(runs, train_env, val_env, ppy, mk["names"], run_dir / "agents",
                                on_done=lambda o: progress.note(
                                    f"{o.name}: done, best first iteration {o.best_iteration}, window-1 validation "
                                    f"Sharpe {o.summary()['val_sharpe']:.2f}, first training "
                                    f"{o.summary()['train_seconds']:.0f} s"),
                                on_log=progress.note, retrain=plan)
    return {"outcomes": outcomes, "eval_env": eval_all}


def _seed_strategies(cfg: PipelineConfig, mk: dict[str, Any], outcomes: dict[str, Any], eval_env: dict[str, Any],
                     seed: int, ppy: float) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """One seed's ensemble and single-agent target weights over the trading bars, and the per-window record."""
    from raytrade.rl.ensemble import best_member, sharpe_or_zero
    from raytrade.rl.env import slice_env
    from raytrade.rl.portfolio_inputs import portfolio_rollout

    w = cfg.rl.window
    agents = list(cfg.rl.agents)
    weights: dict[str, list[np.ndarray]] = {"ensemble": [], **{f"agent:{a}": [] for a in agents}}
    record = []
    for win in mk["windows"]:
        val_sharpe, traded = {}, {}
        for a in agents:
            out = outcomes[f"seed_{seed}/{a}"]
            policy = out.policy if win.k == 0 else out.window_policies[win.k - 1]
            _, val_net = portfolio_rollout(policy, slice_env(eval_env, win.val_start - w + 1, win.trade_start + 1))
            val_sharpe[a] = sharpe_or_zero(val_net, ppy)
            traded[a], _ = portfolio_rollout(policy, slice_env(eval_env, win.trade_start - w + 1, win.trade_stop + 1))
            weights[f"agent:{a}"].append(traded[a])
        choice = next(name for name, weight in best_member(val_sharpe).items() if weight)
        weights["ensemble"].append(traded[choice])
        record.append({"window": win.k + 1, "chosen": choice, "val_sharpe": val_sharpe})
    return {name: np.vstack(parts) for name, parts in weights.items()}, record


def _risk_limited(cfg: PipelineConfig, mk: dict[str, Any], weights: np.ndarray, step: Any) -> np.ndarray:
    """FinRL's turbulence rule over the trading bars with each window's own threshold (module docstring, step 5):
    the index divided by the window's threshold against a threshold of 1 (same bars flagged: thresholds > 0)."""
    from raytrade.rl.portfolio_inputs import weight_limits
    from raytrade.rl.portfolio_risk import risk_limit_weights

    ratio = np.concatenate([mk["turbulence"][win.trade_start:win.trade_stop] / mk["thresholds"][win.k]
                            for win in mk["windows"]])
    limited, _ = risk_limit_weights(weights, step, turbulence=ratio, threshold=1.0, max_drawdown=1.0,
                                    drawdown_cut=1.0, **weight_limits(cfg.portfolio))
    return limited


def _result_metrics(result: Any, ppy: float, n_bootstrap: int) -> dict[str, Any]:
    _, low, high = _sharpe_ci(result.returns[:, None], ppy, n_bootstrap)
    return {**{k: float(result.metrics[k]) for k in METRICS}, "sharpe_ci95": [low, high]}


def run_finrl_protocol(cfg: PipelineConfig, data_path: str | Path | None = None,
                       seeds: int | None = None) -> dict[str, Any]:
    """Run the protocol (module docstring) ``seeds`` times (default ``finrl.seeds``), seeds ``rl.seed + i``.

    Writes to ``<output_dir>/<name>-finrl-<UTC stamp>/``: ``finrl_protocol.json`` (the report: windows, each seed's
    choices and members' validation Sharpes, every strategy's metrics per seed and over seeds, timings),
    ``metrics.json`` (the deterministic part: same config, data and seeds -> same bytes; its SHA-256 is in the
    report), ``finrl_protocol.md`` (the table beside the paper's) and ``equity.png``; one MLflow run with all of it.

    Returns:
        The report dict.

    Raises:
        DataValidationError: the bars break a validation rule (``data.symbol_policy`` decides per symbol).
        ConfigError: a bad ``finrl.trade_start`` or ``rl.features`` name; a single-symbol data set.
        InsufficientDataError: too few bars before ``finrl.trade_start`` for training, turbulence and validation.
    """
    from raytrade import tracking
    from raytrade.dataset.prepare import load_universe_data
    from raytrade.evaluation.plots import plot_equity
    from raytrade.evaluation.portfolio import book_step, run_portfolio_backtests
    from raytrade.evaluation.portfolio_baselines import equal_weight_buy_and_hold, minimum_variance
    from raytrade.rl.portfolio_risk import turbulence_threshold
    from raytrade.runtime import Progress, ray_session
    from raytrade.stages.common import new_run_dir, resolve_annualisation

    n_seeds = int(seeds or cfg.finrl.seeds)
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
    seed_list = [cfg.rl.seed + i for i in range(n_seeds)]
    data_path = Path(data_path or cfg.data.path)
    run_dir = new_run_dir(cfg, "finrl")
    progress = Progress(total=5)
    with progress.stage("load", f"Loading and validating bars from {data_path}"):
        universe = load_universe_data(cfg, data_path)
        if len(universe.symbols) < 2:
            raise ConfigError(f"the FinRL protocol allocates across a universe; {data_path} holds one symbol")
        panel = universe.panel
        annual = resolve_annualisation(cfg, panel.timestamps)
        ppy = annual.periods_per_year
        for symbol, reason in universe.excluded.items():
            progress.note(f"excluded {symbol} (data.symbol_policy exclude): {reason}")
        progress.note(f"{len(universe.symbols)} symbols, {len(panel.timestamps)} bars {panel.timestamps[0].date()} "
                      f"-> {panel.timestamps[-1].date()}, {annual}")
    with ray_session(cfg):
        with progress.stage("features", "Ray Data: causal features per symbol and across the universe; windows"):
            mk = _market(cfg, universe, progress)
            mk["thresholds"] = [turbulence_threshold(mk["turbulence"][mk["first_row"]:win.val_start],
                                                     cfg.portfolio.turbulence_quantile) for win in mk["windows"]]
        with progress.stage("agents", f"{len(cfg.rl.agents)} agents x {n_seeds} seed(s) as Ray tasks "
                                      f"({cfg.rl.iterations} + {cfg.ensemble.retrain_iterations} per window "
                                      f"iterations of {cfg.rl.train_batch_size} env steps)"):
            trained = _train(cfg, mk, seed_list, ppy, run_dir, progress)
    windows = mk["windows"]
    trade_rows = np.arange(windows[0].trade_start, windows[-1].trade_stop)
    stamps = panel.timestamps[trade_rows]
    arrays = mk["arrays"]
    market = {"next_log_returns": arrays["returns"][trade_rows], "tradable": arrays["tradable"][trade_rows],
              "gap_returns": arrays["gap_returns"][trade_rows] if cfg.rl.fill == "next_open" else None,
              "slippage": (cfg.rl.slippage_vol_mult * arrays["volatility"][trade_rows]
                           if cfg.rl.slippage_vol_mult > 0 else None)}
    step = book_step(market["next_log_returns"], cfg.backtest.cost_bps, gap_returns=market["gap_returns"],
                     slippage=market["slippage"], tradable=market["tradable"])

    def backtest(strategies: dict[str, np.ndarray]) -> dict[str, Any]:
        return run_portfolio_backtests(strategies, market["next_log_returns"], cfg.backtest.cost_bps, ppy,
                                       symbols=panel.symbols, tradable=market["tradable"],
                                       gap_returns=market["gap_returns"], slippage=market["slippage"],
                                       timestamps=stamps)

    with progress.stage("backtest", f"Windows, selection and one book per strategy over {len(trade_rows)} trading "
                                    f"bars after {cfg.backtest.cost_bps:g} bps; baselines; bootstrap intervals"):
        pcfg = cfg.portfolio
        h0 = max(0, windows[0].trade_start - pcfg.min_variance_window - 1)
        hist = slice(h0, windows[-1].trade_stop)
        baselines = backtest({
            "buy_and_hold": equal_weight_buy_and_hold(market["tradable"]),
            "min_variance": minimum_variance(mk["past"][hist], arrays["tradable"][hist], pcfg.min_variance_window,
                                             pcfg.rebalance_bars, pcfg.long_only, pcfg.max_weight,
                                             symbols=panel.symbols,
                                             index=panel.timestamps[hist])[windows[0].trade_start - h0:]})
        per_seed, returns, choices, results0 = {}, {}, {}, {}
        for seed in seed_list:
            weights, record = _seed_strategies(cfg, mk, trained["outcomes"], trained["eval_env"], seed, ppy)
            results = backtest({name: _risk_limited(cfg, mk, w, step) for name, w in weights.items()})
            results0 = results0 or {**results, **baselines}
            choices[str(seed)] = record
            per_seed[str(seed)] = {name: _result_metrics(r, ppy, cfg.walk_forward.n_bootstrap)
                                   for name, r in results.items()}
            for name, r in results.items():
                returns.setdefault(name, []).append(r.returns)
        for name, r in baselines.items():
            returns[name] = [r.returns]
        summary = {}
        for name, series in returns.items():
            rows = ([per_seed[str(s)][name] for s in seed_list] if name not in baselines
                    else [_result_metrics(baselines[name], ppy, cfg.walk_forward.n_bootstrap)])
            ci = (rows[0]["sharpe_ci95"] if len(series) == 1  # one series: its own interval, not computed twice
                  else list(_sharpe_ci(np.column_stack(series), ppy, cfg.walk_forward.n_bootstrap)[1:]))
            summary[name] = {"n_seeds": len(rows), "metrics": {k: _stats([r[k] for r in rows]) for k in METRICS},
                             "sharpe_ci95": ci}
        table = summary_table(summary, n_seeds)
        progress.note("\n" + table)
    with progress.stage("report", "Report, figure and MLflow"):
        metrics = {
            "config": cfg.model_dump(mode="json", exclude={"output_dir", "tracking", "ray"}),
            "data": {"path": data_path.name, "symbols": list(panel.symbols), "excluded": dict(universe.excluded),
                     **annual.report()},
            "seeds": seed_list,
            "windows": [{**win.to_dict(panel.timestamps), "turbulence_threshold": mk["thresholds"][win.k],
                         "turbulent_bars": int(np.sum(mk["turbulence"][win.trade_start:win.trade_stop]
                                                      > mk["thresholds"][win.k]))} for win in windows],
            "choices": choices, "per_seed": per_seed, "summary": summary,
            "members": {f"seed_{s}/{a}": trained["outcomes"][f"seed_{s}/{a}"].summary()["val_sharpe"]
                        for s in seed_list for a in cfg.rl.agents},
        }
        text = json.dumps(metrics, indent=2, sort_keys=True, default=float)
        (run_dir / "metrics.json").write_text(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        figure = plot_equity(results0, stamps.to_numpy(), run_dir / "equity.png",
                             title=f"FinRL protocol, seed {seed_list[0]}, after {cfg.backtest.cost_bps:g} bps")
        (run_dir / "finrl_protocol.md").write_text(f"# FinRL ensemble protocol: {cfg.name}\n\n{table}\n")
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-finrl") as run_id:
            report = {"run_dir": str(run_dir), "metrics_sha256": digest, **metrics, "table_markdown": table,
                      "paper_table_ii": PAPER_TABLE_II, "timings_s": progress.timings,
                      "first_training_seconds": {k: o.summary()["train_seconds"]
                                                 for k, o in trained["outcomes"].items()},
                      "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id}}
            (run_dir / "finrl_protocol.json").write_text(json.dumps(report, indent=2, default=float))
            tracking.log_params({"finrl": cfg.finrl.model_dump(mode="json"), "rl": cfg.rl.model_dump(mode="json"),
                                 "ensemble": cfg.ensemble.model_dump(mode="json"), "seeds": seed_list,
                                 "cost_bps": cfg.backtest.cost_bps, "data": data_path.name,
                                 "metrics_sha256": digest})
            tracking.log_metrics({f"{name.replace(':', '_')}_{k}_mean": v["metrics"][k]["mean"]
                                  for name, v in summary.items() for k in METRICS})
            for name in ("finrl_protocol.json", "metrics.json", "finrl_protocol.md"):
                tracking.log_artifact(run_dir / name)
            tracking.log_artifact(figure)
    return report
