"""A run's report as ONE self-contained HTML file: the tables of ``report.json`` and every figure embedded
as a base64 PNG (no external files, scripts or stylesheets), so it can be mailed, archived or opened
from MLflow's artifact view."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

#: Figure name -> caption, in the order the report shows them.
CAPTIONS: dict[str, str] = {
    "equity": "Equity curves of every strategy against buy-and-hold (test split, after costs).",
    "drawdown": "Drawdown below the running peak (fraction).",
    "rolling_sharpe": "Rolling Sharpe ratio (annualised) over a trailing window of bars.",
    "confusion_matrix": "Forecaster confusion matrix on the test split: rows are the true class, columns the "
                        "predicted class (arg-max of the mean MC-dropout probabilities); grey: share of the row.",
    "training_curves": "Training curves: forecaster loss per epoch; agents' mean training-episode return and "
                       "validation Sharpe per iteration.",
    "weights_forecaster_risk_limited": "Target weights over time of the forecaster's cross-sectional strategy through "
                                       "the risk layer (stacked per asset; cash the black line).",
    "weights_min_variance": "Target weights over time of the minimum-variance baseline (rebalanced; drifting "
                            "between rebalances).",
}

_PERCENT = ("total_return", "annual_return", "annual_volatility", "max_drawdown", "hit_rate")
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
.meta{color:#555;font-size:.9em}
"""


def _table(rows: Mapping[str, Mapping[str, Any]], index_name: str) -> str:
    frame = pd.DataFrame(rows).T
    if frame.empty:
        return "<p>(none)</p>"
    for column in frame.columns:
        if column in _PERCENT:
            frame[column] = frame[column].map(lambda v: f"{float(v):.2%}" if pd.notna(v) else "")
        elif pd.api.types.is_float_dtype(frame[column]):
            frame[column] = frame[column].map(lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:.4g}")
    frame.index.name = index_name
    return frame.to_html(border=0, escape=True)


def _pairs(values: Mapping[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_short(v))}</td></tr>"
                    for k, v in values.items())
    return f"<table>{cells}</table>"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _annual_text(value: Any) -> str:
    try:
        return f"{float(value):,.1f}"
    except (TypeError, ValueError):
        return html.escape(str(value))


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = html.escape(CAPTIONS.get(name, name))
    return (f'<figure id="{html.escape(name)}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def write_html_report(report: Mapping[str, Any], figures: Mapping[str, str | Path], path: str | Path,
                      title: str | None = None) -> Path:
    """Write the report of a pipeline (or agents, or backtest) run as one self-contained HTML file.

    Args:
        report: the run's report dict (``report.json``): ``strategies`` (name -> metrics on the test split,
            after costs) and, when present, ``data``, ``backtest``, ``forecaster_metrics``, ``rl_metrics``,
            ``model_versions``, ``mlflow``, ``mlflow_run_ids``, ``config``.
        figures: figure name -> PNG (see :func:`raytrade.evaluation.plots.save_run_figures`); embedded as
            base64, in the order of :data:`CAPTIONS`.
        path: HTML file to write.

    Raises:
        FileNotFoundError: a figure's PNG does not exist.
    """
    run_dir = str(report.get("run_dir", ""))
    title = title or f"raytrade run {Path(run_dir).name}"
    data = report.get("data", {})
    backtest = report.get("backtest", {})
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">written {datetime.now(UTC):%Y-%m-%d %H:%M UTC} &middot; run directory '
             f"<code>{html.escape(run_dir)}</code></p>"]
    if data:
        keys = ("symbol", "symbols", "excluded", "alignment", "path", "bars",
                "first_timestamp", "last_timestamp", "periods_per_year", "calendar",
                "calendar_detail", "embargo_bars", "split_rows", "split_ranges", "scaler_fit_end", "sha256")
        parts += ["<h2>Data</h2>", _pairs({k: data[k] for k in keys if k in data})]
    parts.append("<h2>Strategies on the test split (after costs)</h2>")
    if backtest:
        parts.append(f'<p class="meta">{backtest.get("n_bars", "?")} bars {html.escape(str(backtest.get("first_bar")))}'
                     f' &rarr; {html.escape(str(backtest.get("last_bar")))}; costs {backtest.get("cost_bps", "?")} bps '
                     f'per unit of traded notional; fills {html.escape(str(backtest.get("fill", "?")))}. Returns, '
                     f"volatility, drawdown and hit rate in %; Sharpe and Sortino annualised (zero risk-free rate), "
                     f"Calmar = annual return / max drawdown; turnover = mean fraction of equity traded per bar.</p>")
        if "periods_per_year" in backtest:
            ppy = backtest["periods_per_year"]
            parts.append(f'<p class="meta">Annualised with {_annual_text(ppy)} bars/year, calendar '
                         f'<b>{html.escape(str(backtest.get("calendar", "?")))}</b>'
                         + (f' ({html.escape(str(backtest["calendar_detail"]))})' if backtest.get("calendar_detail")
                            else "") + ".</p>")
    strategies = report.get("strategies", {})
    parts.append(_table({name: {k: v for k, v in m.items() if not isinstance(v, Mapping)}
                         for name, m in strategies.items() if m}, "strategy"))
    for key, heading in (("weights", "Last target weights (fraction of equity; cash is the rest)"),
                         ("contributions", "Contribution of each asset to the return (sum over bars of its P&L as "
                                           "a fraction of equity, before costs)")):
        rows = {name: m[key] for name, m in strategies.items() if m and isinstance(m.get(key), Mapping)}
        if rows:
            parts += [f"<h3>{html.escape(heading)}</h3>", _table(rows, "strategy")]
    ordered = [n for n in CAPTIONS if n in figures] + [n for n in figures if n not in CAPTIONS]
    parts += ["<h2>Figures</h2>", *(_figure(name, Path(figures[name])) for name in ordered)]
    forecaster = report.get("forecaster_metrics", {})
    if forecaster.get("test"):
        parts += ["<h2>Forecaster (test split)</h2>", _pairs(forecaster["test"])]
    xs = forecaster.get("cross_sectional")
    if xs:
        parts += ["<h3>Cross-sectional (per timestamp across the universe; 95% stationary-bootstrap intervals)</h3>",
                  _pairs({k: v for k, v in xs.items() if k != "per_symbol"})]
        if xs.get("per_symbol"):
            parts.append(_table(xs["per_symbol"], "symbol"))
    if report.get("rl_metrics"):
        rows = {name: {k: v for k, v in m.items() if k not in ("history", "checkpoint", "worker_pid")}
                for name, m in report["rl_metrics"].items()}
        parts += ["<h2>Agents (validation split)</h2>", _table(rows, "agent")]
    tracking = {**{f"version: {k}": v for k, v in report.get("model_versions", {}).items()},
                **{f"run id: {k}": v for k, v in report.get("mlflow_run_ids", {}).items()},
                **({"tracking URI": report["mlflow"]["tracking_uri"]} if "mlflow" in report else {})}
    if tracking:
        parts += ["<h2>MLflow</h2>", _pairs(tracking)]
    if report.get("config"):
        import yaml

        parts += ["<h2>Configuration</h2>", "<details><summary>YAML</summary><pre>"
                  + html.escape(yaml.safe_dump(report["config"], sort_keys=False)) + "</pre></details>"]
    document = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    path = Path(path)
    path.write_text(document, encoding="utf-8")
    return path


def find_report(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """The ``report.html`` of a run: ``run`` is a run directory, the name of one under ``runs_dir``, or
    ``"latest"`` (the newest report under ``runs_dir``).

    Raises:
        RaytradeError: no such run, or the run has no report (``raytrade pipeline``, ``agents`` and
            ``backtest`` write one).
    """
    from raytrade.errors import RaytradeError

    runs_dir = Path(runs_dir)
    if str(run) == "latest" and not Path(run).is_dir():
        found = sorted(runs_dir.glob("*/report.html"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RaytradeError(f"no run with a report.html under {runs_dir} (run `raytrade pipeline` first, "
                                f"or pass --runs <output_dir>)")
        return found[-1].resolve()
    run_dir = Path(run) if Path(run).is_dir() else runs_dir / str(run)
    if not run_dir.is_dir():
        raise RaytradeError(f"no run directory {run!r} (looked for {Path(run)} and {runs_dir / str(run)})")
    path = run_dir / "report.html"
    if not path.is_file():
        raise RaytradeError(f"{run_dir} has no report.html (written by `raytrade pipeline`, `agents` and `backtest`)")
    return path.resolve()
