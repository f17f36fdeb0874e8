"""`make demo`'s command on the full bundled data (slow: about 10 minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, free_port


@pytest.mark.slow
def test_demo_pipeline_cli_end_to_end(tmp_path):
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "demo.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cfg["serve"]["port"] = free_port()
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "raytrade.cli", "pipeline", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("[1/6]", "[3/6] Ray Train", "[4/6] Agents ppo, sac, td3", "[5/6] Ray Serve", "[6/6]"):
        assert stage in proc.stderr
    for agent in cfg["rl"]["agents"]:  # per-iteration progress from the agents' Ray tasks
        assert f"[{agent}] iteration {cfg['rl']['iterations']}/{cfg['rl']['iterations']}" in proc.stderr
    report_path = proc.stdout.strip().splitlines()[-1].removeprefix("report: ")
    report = json.loads(open(report_path).read())
    assert report["data"]["bars"] == 20111
    assert len(report["serve"]["responses"]) == 3
    assert report["forecaster_metrics"]["test"]["n"] > 2000
    table = report["backtest"]["table"]
    assert table in proc.stderr  # the FinRL-style table is printed and saved
    for name in ("buy_and_hold", "forecaster", *cfg["rl"]["agents"],
                 *(f"ensemble_{m}" for m in cfg["ensemble"]["methods"])):
        assert f"{name} " in table and name in report["strategies"]
