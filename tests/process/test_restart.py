"""Restart types against real exits: always / on-failure / never x how the worker ended.

OTP: permanent restarts on any exit, transient only on an abnormal one (non-zero
code, or a signal the supervisor did not send), temporary never. Every fact is
checked against the OS with psutil, not only against what `orch tree` reports.
"""
import os
import signal
from pathlib import Path

import psutil
import pytest

from orchestrator.testing import gone, wait_for
from tests.helpers import WORKERS, ignores_sigterm, running_again, settled, toml_value

# exit reason -> (trigger args, signal the test sends to the worker)
REASONS = {
    "exit 0": ({"how": "exit", "code": 0}, signal.SIGUSR1),
    "exit 1": ({"how": "exit", "code": 1}, signal.SIGUSR1),
    "SIGKILL from outside": ({"how": "exit", "code": 0}, signal.SIGKILL),
    "SIGTERM from outside": ({"how": "exit", "code": 0}, signal.SIGTERM),
    "raised exception": ({"how": "raise"}, signal.SIGUSR1),
    "SystemExit(3)": ({"how": "system_exit", "code": 3}, signal.SIGUSR1),
}

# restart type -> exit reason -> "restarted", or the state it is left in
EXPECTED = {
    "always": dict.fromkeys(REASONS, "restarted"),
    "on-failure": {**dict.fromkeys(REASONS, "restarted"), "exit 0": "stopped"},
    "never": {**dict.fromkeys(REASONS, "failed"), "exit 0": "stopped"},
}

MATRIX = [pytest.param(restart, reason, outcome, id=f"{restart}-{reason}")
          for restart, row in EXPECTED.items() for reason, outcome in row.items()]


def armed(path: Path, pid: int) -> bool:
    """The trigger worker `pid` has installed its handler (it appends its pid when it has)."""
    return path.exists() and str(pid) in path.read_text().split()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("restart, reason, outcome", MATRIX)
def test_restart_type_by_exit_reason(orch_tree, tmp_path, restart, reason, outcome):
    args, signum = REASONS[reason]
    marker = tmp_path / "armed"
    tree = orch_tree(f'''
        name = "restart"
        plugins = {WORKERS!r}
        [[children]]
        name = "sup"
          [[children.children]]
          name = "w"
          worker = "s.trigger"
          restart = "{restart}"
          args = {toml_value({"armed": str(marker), **args})}
    ''')
    sup, old = tree.node("sup")["pid"], tree.node("sup/w")["pid"]
    wait_for(lambda: armed(marker, old), message=f"worker {old} armed")

    os.kill(old, signum)

    if outcome == "restarted":
        node = tree.wait_for(lambda: running_again(tree.node("sup/w"), old), message="sup/w restarted")
        new = psutil.Process(node["pid"])
        assert new.ppid() == sup, "the new process is a child of its supervisor"
        assert node["restarts"] == 1
        assert gone(old)
    else:
        node = tree.wait_for(lambda: settled(tree.node("sup/w")), message="sup/w settled")
        assert (node["state"], node["pid"], node["restarts"]) == (outcome, None, 0)
        assert gone(old)
        assert [p.pid for p in psutil.Process(sup).children()] == [], "nothing was started again"
    assert tree.node("sup")["pid"] == sup and psutil.Process(sup).ppid() == tree.root_pid
    assert tree.stop() == 0


@pytest.mark.timeout(30)
def test_worker_that_dies_while_the_tree_stops_is_not_restarted(orch_tree, tmp_path):
    """`late` ignores SIGTERM, so the tree is stuck stopping it while `early` is killed."""
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "stopping"
        plugins = {WORKERS!r}
        [[children]]
        name = "early"
        worker = "t.record"
        restart = "always"
        args = {{ log = "{log}", label = "early" }}
        [[children]]
        name = "late"
        worker = "t.ignore_term"
        stop_timeout = 1.0
    ''')
    early, late = tree.node("early")["pid"], tree.node("late")["pid"]
    wait_for(lambda: log.exists() and "start early" in log.read_text(), message="early armed")
    wait_for(lambda: ignores_sigterm(late), message="late ignores SIGTERM")

    os.kill(tree.pid, signal.SIGTERM)
    tree.wait_for(lambda: tree.node("")["state"] == "stopping", message="the root stopping")
    os.kill(early, signal.SIGKILL)

    assert tree.wait_exit(timeout=15) == 0
    assert gone(early) and gone(late)
    assert log.read_text().splitlines() == ["start early"], "early was never started again"
    assert "restarting" not in tree.read_output()

