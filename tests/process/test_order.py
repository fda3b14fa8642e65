"""Tree shape and order: every node is a process of its parent; start in spec order, stop in reverse.

Stop order is observable exactly: a supervisor waits for each child to exit before
signalling the next, and `t.record` logs "stop LABEL" from its SIGTERM handler.
Start order is read from pid allocation order (pids grow, wrapping at pid_max):
the "start LABEL" lines of processes started together race each other.
"""
import os
import signal
from pathlib import Path

import psutil
import pytest

from orchestrator.testing import descendants, gone, wait_for
from tests.helpers import PID_MAX, WORKERS, created_in_order, down, ignores_sigterm, lines, recorder, tree_text

DEPTH_FIRST = ["a", "s", "s/x", "s/t", "s/t/y", "s/z", "c"]
WORKER_PATHS = ["a", "s/x", "s/t/y", "s/z", "c"]


def three_levels(log: Path, start_method: str = "fork") -> str:
    """root -> a, s (-> x, t (-> y), z), c; every worker records under its path."""
    def record(table: str, path: str) -> str:
        return recorder(path.rpartition("/")[2], log, label=path, table=table)
    return tree_text("order", f'start_method = "{start_method}"\n', WORKERS) + (
        record("children", "a") + '[[children]]\nname = "s"\n'
        + record("children.children", "s/x") + '[[children.children]]\nname = "t"\n'
        + record("children.children.children", "s/t/y") + record("children.children", "s/z")
        + record("children", "c"))


def stop_with(tree, how: str) -> int:
    if how == "orch down":
        down_code, root_code, _, err = down(tree)
        assert down_code == 0, err
        return root_code
    os.kill(tree.pid, signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    return tree.wait_exit()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_every_node_is_a_process_of_its_parent_node(orch_tree, tmp_path, start_method):
    tree = orch_tree(three_levels(tmp_path / "log", start_method))
    pids = tree.pids()
    assert pids[""] == tree.root_pid
    for path in DEPTH_FIRST:
        parent = path.rpartition("/")[0]
        assert psutil.Process(pids[path]).ppid() == pids[parent], f"{path} is a child of {parent or 'the root'}"
    others = [proc for proc in descendants(tree.pid) if proc.pid not in pids.values()]
    assert [proc for proc in others if not _is_resource_tracker(proc)] == [], \
        "under the root there are only the spec's nodes (and spawn's resource tracker)"
    assert stop_with(tree, "SIGTERM") == 0


def _is_resource_tracker(proc: psutil.Process) -> bool:
    return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())


@pytest.mark.timeout(30)
def test_siblings_start_in_spec_order(orch_tree, tmp_path):
    tree = orch_tree(three_levels(tmp_path / "log"))
    pids = tree.pids()
    assert created_in_order([pids[p] for p in ("a", "s", "c")], after=tree.root_pid)
    assert created_in_order([pids[p] for p in ("s/x", "s/t", "s/z")], after=pids["s"])
    assert stop_with(tree, "SIGTERM") == 0


@pytest.mark.timeout(30)
def test_start_is_depth_first_a_supervisor_subtree_is_up_before_its_next_sibling(orch_tree, tmp_path):
    """OTP starts children one at a time; a supervisor child counts as started once its children are."""
    tree = orch_tree(three_levels(tmp_path / "log"))
    pids = tree.pids()
    order = sorted(DEPTH_FIRST, key=lambda path: (pids[path] - tree.root_pid) % PID_MAX)
    assert order == DEPTH_FIRST, "processes were created in depth-first spec order"
    assert stop_with(tree, "SIGTERM") == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["orch down", "SIGTERM", "SIGINT"])
def test_stop_is_reverse_spec_order_depth_first(orch_tree, tmp_path, how):
    log = tmp_path / "log"
    tree = orch_tree(three_levels(log))
    wait_for(lambda: len(lines(log)) == 5, message="every worker recorded its start")
    assert sorted(lines(log)) == sorted(f"start {path}" for path in WORKER_PATHS)
    pids = tree.pids()

    assert stop_with(tree, how) == 0

    assert lines(log)[5:] == ["stop c", "stop s/z", "stop s/t/y", "stop s/x", "stop a"]
    assert all(gone(pid) for pid in pids.values())


@pytest.mark.timeout(30)
def test_worker_ignoring_sigterm_is_killed_after_its_stop_timeout(orch_tree):
    tree = orch_tree(f'''
        name = "stubborn"
        plugins = {WORKERS!r}
        [[children]]
        name = "w"
        worker = "t.ignore_term"
        stop_timeout = 0.5
    ''')
    pid = tree.node("w")["pid"]
    wait_for(lambda: ignores_sigterm(pid), message="w ignores SIGTERM")

    down_code, root_code, seconds, err = down(tree)

    assert (down_code, root_code) == (0, 0), err
    assert "w did not stop within 0.5s; sending SIGKILL" in tree.read_output()
    assert 0.5 <= seconds < 10, "waited the stop timeout, not the 5 s default or forever"
    assert gone(pid) and descendants(tree.pid) == []


@pytest.mark.timeout(30)
def test_a_supervisor_is_given_time_to_stop_its_children(orch_tree, tmp_path):
    """sup's budget covers its stubborn child: sup is not killed mid-way, so `rec` stops gracefully."""
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "budget"
        plugins = {WORKERS!r}
        [[children]]
        name = "sup"
          [[children.children]]
          name = "rec"
          worker = "t.record"
          args = {{ log = "{log}", label = "rec" }}
          [[children.children]]
          name = "stubborn"
          worker = "t.ignore_term"
          stop_timeout = 0.5
    ''')
    pids = tree.pids()
    wait_for(lambda: ignores_sigterm(pids["sup/stubborn"]) and lines(log) == ["start rec"],
             message="both children armed")

    down_code, root_code, _, err = down(tree)

    assert (down_code, root_code) == (0, 0), err
    assert lines(log) == ["start rec", "stop rec"]
    assert all(gone(pid) for pid in pids.values())


@pytest.mark.timeout(30)
def test_orch_down_returns_0_while_the_caller_has_not_reaped_the_root(orch_tree):
    """The test process is the root's parent and blocks in `orch down`: the exited root is a zombie."""
    tree = orch_tree(f'''
        name = "zombie"
        plugins = {WORKERS!r}
        [[children]]
        name = "w"
        worker = "t.sleep"
        stop_timeout = 0.5
    ''')
    result = tree.orch("down", tree.name, timeout=20)
    assert result.returncode == 0, result.stderr
    assert tree.wait_exit() == 0
