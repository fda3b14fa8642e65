"""The benchmark harness still runs end to end (a smoke run, no timing asserted), so it cannot rot."""
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import kill_by_pid, marked

BENCH = Path(__file__).resolve().parents[2] / "bench"
FIGURES = ["bringup_s", "restart_p50_s", "restart_p95_s", "restart_max_s", "restart_kills", "storm_s", "idle_cpu_pct",
           "manager_rss_mib", "root_rss_mib", "managers_rss_mib", "tree_uss_mib", "leaf_uss_mib", "leaf_mem_mib", "teardown_s", "orphans"]


def run_bench(script: str, *args: str, timeout: float) -> "subprocess.CompletedProcess[str]":
    """Run a bench script from the test venv; kill whatever it left, wherever it went (by the
    mark in its environment, which every process it starts inherits), even on a timeout."""
    mark = uuid.uuid4().hex
    env = dict(os.environ, ORCH_BENCH_MARK=mark)
    try:
        result = subprocess.run([sys.executable, str(BENCH / script), *args, "--no-venv"], env=env,
                                capture_output=True, text=True, timeout=timeout)
    finally:
        kill_by_pid(marked("ORCH_BENCH_MARK", mark))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_quick_bench_run_writes_every_figure(tmp_path):
    run_bench("run.py", "--quick", "--contenders", "bare,bare-spawn,orch-fork", "--out", str(tmp_path), timeout=80)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped"] == [], results["skipped"]
    summary = results["summary"]
    for contender in ("bare", "bare-spawn", "orch-fork"):
        assert sorted(summary[contender]["5"]) == sorted(FIGURES + ["reps"] + (
            ["tree_json_s", "orphans_gone_s"] if contender.startswith("orch") else [])), contender
    # bare leaks every leaf when killed, so it has no "all gone" time; orch leaves none behind
    assert summary["bare"]["5"]["orphans"] == 5
    assert summary["orch-fork"]["5"]["orphans"] == 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in report
    assert "| bare-spawn |" in report


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not (shutil.which("npm") and shutil.which("node")), reason="PM2 needs node and npm")
def test_quick_bench_run_measures_pm2_and_orch_spawn(tmp_path):
    """The contenders the quick run above leaves out: PM2 (installed with npm as the bench
    installs it; only a machine without npm skips it) and orch under spawn."""
    install = subprocess.run([sys.executable, "-c", "import logs_flood; logs_flood.install_pm2()"], cwd=BENCH,
                             capture_output=True, text=True, timeout=240)
    assert install.returncode == 0 and "failed" not in install.stdout, install.stdout + install.stderr
    run_bench("run.py", "--quick", "--contenders", "bare,orch-spawn,pm2", "--out", str(tmp_path), timeout=50)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped"] == [], results["skipped"]
    summary = results["summary"]
    assert sorted(summary["pm2"]["5"]) == sorted(FIGURES + ["reps"]), summary["pm2"]["5"]
    assert sorted(summary["orch-spawn"]["5"]) == sorted(FIGURES + ["reps", "tree_json_s", "orphans_gone_s"])
    assert summary["pm2"]["5"]["orphans"] == 5  # pm2-runtime's children outlive it: what the figure shows
    assert summary["orch-spawn"]["5"]["orphans"] == 0
    assert "| pm2 |" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_logs_flood_bench_runs_orch_and_the_redirect(tmp_path):
    """bench/logs_flood.py end to end on a tiny flood: every line in orch's node log and in the
    plain redirect's file, exactly once and in order, and the sibling-restart figure taken."""
    out = tmp_path / "flood.json"
    result = run_bench("logs_flood.py", "--lines", "2000", "--reps", "1", "--kills", "2",
                       "--contenders", "redirect,orch", "--json", str(out), timeout=80)
    results = json.loads(out.read_text())
    for contender in ("redirect", "orch"):
        summary = results["summary"][contender]
        assert summary["exact"] == summary["runs"] == 1, (contender, summary, result.stdout)
    assert len(results["restarts"]["flood"]["samples_s"]) == 2, result.stdout
    assert "| orch |" in result.stdout
