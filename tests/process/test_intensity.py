"""Restart intensity against real processes: give up, escalate, and leave nothing behind.

OTP: more than `max_restarts` restarts within `within` seconds make a supervisor
stop its children (reverse order) and exit with failure; its parent sees a failed
child and applies that child's own restart rule. A restart round is one restart;
stops the orchestrator causes itself never count.
"""
import os
import signal

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import descendants, gone, wait_for
from tests.helpers import WORKERS, lines, marked, recorder


def leftovers(tree) -> list:
    """Live processes (not zombies) that carry this tree's private run dir in their environment."""
    return list(marked(control.ENV_RUN_DIR, tree.env[control.ENV_RUN_DIR]))


def assert_nothing_left(tree, pids) -> None:
    alive = [pid for pid in set(pids) | set(tree.seen) if not gone(pid)]
    assert alive == [], f"processes left behind: {alive}"
    assert descendants(tree.pid) == []
    assert leftovers(tree) == []


def watch_until_exit(tree, timeout: float = 15.0) -> tuple:
    """Collect every descendant pid (OS truth) until the root exits; (exit code, pids)."""
    seen = set()

    def exited():
        seen.update(proc.pid for proc in descendants(tree.pid))
        return tree.process.poll() is not None
    tree.wait_for(exited, timeout=timeout, message="the root to exit")
    return tree.wait_exit(), seen


def restarted(tree, path: str, old: int):
    node = tree.node(path)
    return node if node["pid"] not in (None, old) else None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("strategy, victim", [("one_for_all", "b"), ("rest_for_one", "a")])
def test_a_round_counts_as_one_restart(orch_tree, tmp_path, strategy, victim):
    """max_restarts = 1: one kill restarts all three children; the second kill gives up."""
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "round"
        plugins = {WORKERS!r}
        strategy = "{strategy}"
        max_restarts = 1
        within = 60
    ''' + "".join(recorder(name, log, restart="always") for name in "abc"))
    wait_for(lambda: len(lines(log)) == 3, message="a, b, c recorded their start")
    first = tree.pids()

    os.kill(first[victim], signal.SIGKILL)
    tree.wait_for(lambda: len(lines(log)) == 8 and all(restarted(tree, n, first[n]) for n in "abc"),
                  message="all three started again")
    second = tree.pids()
    assert tree.process.poll() is None, "one round is one restart: the root did not give up"
    assert all(psutil.Process(second[name]).ppid() == tree.root_pid for name in "abc")

    os.kill(second[victim], signal.SIGKILL)
    code, seen = watch_until_exit(tree)

    assert code == 1
    output = tree.read_output()
    assert f"giving up: {victim} was killed by SIGKILL; more than 1 restarts within 60s" in output
    survivors = [name for name in "cba" if name != victim]
    assert lines(log)[8:] == [f"stop {name}" for name in survivors], "stopped in reverse spec order"
    assert_nothing_left(tree, set(first.values()) | set(second.values()) | seen)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("restart", ["never", "on-failure", "always"])
def test_sub_supervisor_gives_up_and_its_parent_applies_its_restart_rule(orch_tree, tmp_path, restart):
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "escalate"
        plugins = {WORKERS!r}
        max_restarts = 5
        within = 60
        [[children]]
        name = "peer"
        worker = "t.sleep"
        [[children]]
        name = "sup"
        restart = "{restart}"
        max_restarts = 1
        within = 60
    ''' + "".join(recorder(name, log, table="children.children", restart="always")
                 for name in "abc"))
    wait_for(lambda: len(lines(log)) == 3, message="a, b, c recorded their start")
    first = tree.pids()

    os.kill(first["sup/b"], signal.SIGKILL)
    second = tree.wait_for(lambda: restarted(tree, "sup/b", first["sup/b"]), message="sup/b restarted")
    wait_for(lambda: len(lines(log)) == 4, message="sup/b recorded its start")
    os.kill(second["pid"], signal.SIGKILL)

    tree.wait_for(lambda: restarted(tree, "sup", first["sup"]) or tree.node("sup")["state"] == "failed",
                  message="sup gave up and its parent handled it")
    assert lines(log)[4:6] == ["stop c", "stop a"], "sup stopped its children in reverse order"
    assert "sup: giving up: sup/b was killed by SIGKILL; more than 1 restarts within 60s" in tree.read_output()
    for path in ("sup", "sup/a", "sup/b", "sup/c"):
        assert gone(first[path]), f"old {path} is gone"
    assert gone(second["pid"])
    assert tree.pids()["peer"] == first["peer"] and not gone(first["peer"]), "the peer is untouched"
    if restart == "never":
        node = tree.node("sup")
        assert (node["state"], node["pid"]) == ("failed", None)
        assert [p.pid for p in psutil.Process(tree.root_pid).children()] == [first["peer"]]
    else:
        nodes = tree.wait_running()
        pids = {node["path"]: node["pid"] for node in nodes}
        assert tree.node("sup")["restarts"] == 1
        assert psutil.Process(pids["sup"]).ppid() == tree.root_pid
        for name in "abc":
            assert pids[f"sup/{name}"] not in (first[f"sup/{name}"], second["pid"])
            assert psutil.Process(pids[f"sup/{name}"]).ppid() == pids["sup"]
    assert tree.process.poll() is None, "the root had budget left"
    assert tree.stop() == 0


@pytest.mark.timeout(30)
def test_root_gives_up_when_escalations_exceed_its_budget(orch_tree):
    """sup/crasher crash-loops: sup gives up twice, the root restarts it once, then gives up."""
    tree = orch_tree(f'''
        name = "rootfail"
        plugins = {WORKERS!r}
        max_restarts = 1
        within = 60
        [[children]]
        name = "peer"
        worker = "t.sleep"
        [[children]]
        name = "sup"
        restart = "always"
        max_restarts = 1
        within = 60
          [[children.children]]
          name = "steady"
          worker = "t.sleep"
          [[children.children]]
          name = "inner"
            [[children.children.children]]
            name = "deep"
            worker = "t.sleep"
          [[children.children]]
          name = "crasher"
          worker = "t.exit"
          args = {{ code = 1, after = 0.2 }}
    ''', wait=False)
    code, seen = watch_until_exit(tree)

    assert code == 1
    output = tree.read_output()
    assert "giving up: sup exited with code 1" in output
    assert "because: sup/crasher exited with code 1; more than 1 restarts within 60s" in output
    assert len(seen) >= 6, f"the tree had come up before failing: {sorted(seen)}"
    assert_nothing_left(tree, seen)


@pytest.mark.timeout(30)
def test_crash_looping_worker_makes_its_supervisor_give_up(orch_tree):
    tree = orch_tree(f'''
        name = "loop"
        plugins = {WORKERS!r}
        [[children]]
        name = "peer"
        worker = "t.sleep"
        [[children]]
        name = "sup"
        restart = "never"
        max_restarts = 3
        within = 5
          [[children.children]]
          name = "crasher"
          worker = "t.exit"
          args = {{ code = 1 }}
    ''', wait=False)
    node = tree.wait_for(lambda: tree.node("sup")["state"] == "failed" and tree.node("sup/crasher"),
                         message="sup gave up")
    assert (node["pid"], node["restarts"]) == (None, 3)
    assert "sup: giving up: sup/crasher exited with code 1; more than 3 restarts within 5s" in tree.read_output()
    assert tree.process.poll() is None
    assert [p.pid for p in psutil.Process(tree.root_pid).children()] == [tree.node("peer")["pid"]]
    assert tree.stop() == 0


@pytest.mark.timeout(30)
def test_crash_looping_worker_under_the_root_ends_orch_up_with_1(orch_tree):
    tree = orch_tree(f'''
        name = "rootloop"
        plugins = {WORKERS!r}
        max_restarts = 3
        within = 5
        [[children]]
        name = "crasher"
        worker = "t.exit"
        args = {{ code = 1 }}
    ''', wait=False)
    code, seen = watch_until_exit(tree)
    assert code == 1
    assert "giving up: crasher exited with code 1; more than 3 restarts within 5s" in tree.read_output()
    assert_nothing_left(tree, seen)


@pytest.mark.timeout(30)
def test_shutdown_stops_never_count_as_restarts(orch_tree, tmp_path):
    """max_restarts = 0 everywhere: any counted exit would make a supervisor give up."""
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "nocount"
        plugins = {WORKERS!r}
        strategy = "one_for_all"
        max_restarts = 0
        [[children]]
        name = "sup"
        strategy = "one_for_all"
        max_restarts = 0
    ''' + recorder("x", log, "sup/x", "children.children", restart="always")
        + recorder("y", log, "sup/y", "children.children", restart="always")
        + recorder("z", log, restart="always"))
    wait_for(lambda: len(lines(log)) == 3, message="every worker recorded its start")
    pids = tree.pids()

    assert tree.stop() == 0

    assert "giving up" not in tree.read_output()
    assert lines(log)[3:] == ["stop z", "stop sup/y", "stop sup/x"]
    assert_nothing_left(tree, pids.values())
