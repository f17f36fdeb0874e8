"""The demo commands on the full bundled data: `make demo` (the 13-symbol daily universe, about 4 minutes on 2 cores)
and the one-symbol demo config on the BTC/USD 1h bars (about 10 minutes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, free_port


def _run(config: str, tmp_path) -> tuple[dict, subprocess.CompletedProcess, dict]:
    cfg = yaml.safe_load((REPO / config).read_text())
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cfg.setdefault("serve", {})["port"] = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "raytrade.cli", "pipeline", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report_path = proc.stdout.strip().splitlines()[-1].removeprefix("report: ")
    return cfg, proc, json.loads(open(report_path).read())


@pytest.mark.slow
def test_make_demo_runs_the_bundled_universe_end_to_end(tmp_path):
    """`make demo`'s config (read from the Makefile) on the bundled 13-symbol universe: every stage, the report
    contract (data.symbols, each strategy's metrics and last weights, agents and ensembles), POST /portfolio."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    config = re.search(r"--config (\S+)", recipe).group(1)
    cfg, proc, report = _run(config, tmp_path)
    for stage in ("[2/7] Ray Data", "[3/7] Ray Train", "[4/7] Portfolio agents ppo, sac, td3", "[5/7] Portfolio",
                  "[6/7] Ray Serve", "[7/7]"):
        assert stage in proc.stderr
    symbols = report["data"]["symbols"]
    assert len(symbols) == 13 and report["data"]["bars"] == 17953
    table = report["backtest"]["table"]
    assert table in proc.stderr
    for name in ("buy_and_hold", "equal_weight", "min_variance", "forecaster", "forecaster_risk_limited",
                 *cfg["rl"]["agents"], *(f"ensemble_{m}" for m in cfg["ensemble"]["methods"])):
        assert f"{name} " in table and list(report["strategies"][name]["weights"]) == symbols
    responses = report["serve"]["responses"]
    assert len(responses) == cfg["serve"]["n_requests"]
    for body in responses:
        assert set(body["weights"]) == set(symbols) and body["cash"] == pytest.approx(1 - sum(body["weights"].values()))


@pytest.mark.slow
def test_demo_pipeline_cli_end_to_end(tmp_path):
    cfg, proc, report = _run("jobs/configs/demo.yaml", tmp_path)
    for stage in ("[1/6]", "[3/6] Ray Train", "[4/6] Agents ppo, sac, td3", "[5/6] Ray Serve", "[6/6]"):
        assert stage in proc.stderr
    for agent in cfg["rl"]["agents"]:  # per-iteration progress from the agents' Ray tasks
        assert f"[{agent}] iteration {cfg['rl']['iterations']}/{cfg['rl']['iterations']}" in proc.stderr
    assert report["data"]["bars"] == 20111
    assert len(report["serve"]["responses"]) == 3
    assert report["forecaster_metrics"]["test"]["n"] > 2000
    table = report["backtest"]["table"]
    assert table in proc.stderr  # the FinRL-style table is printed and saved
    for name in ("buy_and_hold", "forecaster", *cfg["rl"]["agents"],
                 *(f"ensemble_{m}" for m in cfg["ensemble"]["methods"])):
        assert f"{name} " in table and name in report["strategies"]
