"""Restart strategies against real processes: which siblings a SIGKILLed child takes along.

OTP: one_for_one restarts only the failed child; one_for_all stops every sibling
(reverse spec order) and starts them all (spec order); rest_for_one does the same
for the failed child and the siblings after it, leaving earlier siblings alone.
"""
import os
import signal

import psutil
import pytest

from orchestrator.testing import gone, wait_for
from tests.helpers import WORKERS, created_in_order, lines, recorder, running_again, settled

# (strategy, child killed, siblings stopped in this order, children started again)
CASES = [
    ("one_for_one", "b", [], ["b"]),
    ("one_for_one", "a", [], ["a"]),
    ("one_for_all", "b", ["c", "a"], ["a", "b", "c"]),
    ("one_for_all", "c", ["b", "a"], ["a", "b", "c"]),
    ("rest_for_one", "a", ["c", "b"], ["a", "b", "c"]),
    ("rest_for_one", "b", ["c"], ["b", "c"]),
    ("rest_for_one", "c", [], ["c"]),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("strategy, killed, stopped, started", CASES,
                         ids=[f"{case[0]}-kill-{case[1]}" for case in CASES])
def test_strategy_restarts_the_right_siblings(orch_tree, tmp_path, strategy, killed, stopped, started):
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "strategy"
        plugins = {WORKERS!r}
        [[children]]
        name = "sup"
        strategy = "{strategy}"
        max_restarts = 5
        within = 60
    ''' + "".join(recorder(name, log, table="children.children", restart="always") for name in "abc"))
    wait_for(lambda: len(lines(log)) == 3, message="a, b and c recorded their start")
    sup = tree.node("sup")["pid"]
    old = {name: tree.node(f"sup/{name}")["pid"] for name in "abc"}

    os.kill(old[killed], signal.SIGKILL)

    def restarted():
        return len(lines(log)) == 3 + len(stopped) + len(started) and all(
            tree.node(f"sup/{name}")["pid"] not in (None, old[name]) for name in started)
    tree.wait_for(restarted, message=f"{started} started again")

    after = lines(log)[3:]
    assert after[:len(stopped)] == [f"stop {name}" for name in stopped], "siblings stop in reverse spec order"
    assert sorted(after[len(stopped):]) == sorted(f"start {name}" for name in started)
    new = {name: tree.node(f"sup/{name}") for name in "abc"}
    for name in "abc":
        if name in started:
            assert gone(old[name]), f"old {name} is gone"
            assert psutil.Process(new[name]["pid"]).ppid() == sup
            assert (new[name]["state"], new[name]["restarts"]) == ("running", 1), f"sup/{name} row"
        else:
            assert new[name]["pid"] == old[name] and psutil.Process(old[name]).ppid() == sup, \
                f"{name} kept its process"
            assert (new[name]["state"], new[name]["restarts"]) == ("running", 0), f"sup/{name} row"
    assert created_in_order([new[name]["pid"] for name in started], after=sup), "started in spec order"
    assert tree.node("sup")["pid"] == sup
    assert tree.stop() == 0


@pytest.mark.timeout(30)
def test_one_for_all_does_not_start_a_never_bystander_again(orch_tree, tmp_path):
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "bystander"
        plugins = {WORKERS!r}
        [[children]]
        name = "sup"
        strategy = "one_for_all"
    ''' + recorder("once", log, table="children.children", restart="never")
        + recorder("crasher", log, table="children.children", restart="always"))
    wait_for(lambda: len(lines(log)) == 2, message="both recorded their start")
    once, crasher = tree.node("sup/once")["pid"], tree.node("sup/crasher")["pid"]

    os.kill(crasher, signal.SIGKILL)

    node = tree.wait_for(lambda: running_again(tree.node("sup/crasher"), crasher), message="crasher back")
    assert psutil.Process(node["pid"]).ppid() == tree.node("sup")["pid"]
    assert gone(once), "the bystander was stopped by the round"
    assert "stop once" in lines(log)
    bystander = tree.node("sup/once")
    assert (bystander["state"], bystander["pid"], bystander["restarts"]) == ("stopped", None, 0)
    assert lines(log).count("start once") == 1, "the never child was not started again"
    assert tree.stop() == 0


@pytest.mark.timeout(30)
def test_one_for_all_leaves_siblings_alone_when_a_never_child_dies(orch_tree, tmp_path):
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "temporary"
        plugins = {WORKERS!r}
        [[children]]
        name = "sup"
        strategy = "one_for_all"
    ''' + recorder("once", log, table="children.children", restart="never")
        + recorder("other", log, table="children.children", restart="always"))
    wait_for(lambda: len(lines(log)) == 2, message="both recorded their start")
    once, other = tree.node("sup/once")["pid"], tree.node("sup/other")["pid"]

    os.kill(once, signal.SIGKILL)

    node = tree.wait_for(lambda: settled(tree.node("sup/once")), message="once settled")
    assert (node["state"], node["pid"]) == ("failed", None)
    assert tree.node("sup/other")["pid"] == other and not gone(other), "no round for a never child"
    assert sorted(lines(log)) == ["start once", "start other"]
    assert tree.stop() == 0
