"""start_method = "spawn": a 3-level tree of .py-plugin workers, its restarts, and a clean stop."""
import os
import signal

import psutil
import pytest

from orchestrator.testing import descendants, gone, json_tree
from tests.helpers import PLUGIN, down

TREE = f'''
    name = "spawned"
    start_method = "spawn"
    plugins = ["{PLUGIN}"]
    [[children]]
    name = "a"
    worker = "t.sleep"
    [[children]]
    name = "sup"
      [[children.children]]
      name = "b"
      worker = "t.sleep"
      [[children.children]]
      name = "sup2"
        [[children.children.children]]
        name = "c"
        worker = "t.sleep"
        [[children.children.children]]
        name = "d"
        worker = "t.sleep"
'''
PATHS = ["", "a", "sup", "sup/b", "sup/sup2", "sup/sup2/c", "sup/sup2/d"]


def tracker_pids(root_pid: int):
    """multiprocessing's resource tracker, which spawn (unlike fork) starts as a child of the root."""
    return [proc.pid for proc in psutil.Process(root_pid).children()
            if "resource_tracker" in " ".join(proc.cmdline())]


def test_spawn_tree_mirrors_spec_in_the_os(orch_tree, orch_env):
    tree = orch_tree(TREE)  # waits until every node runs with ppid == its parent node's pid
    nodes = [n for n in json_tree(orch_env, "spawned") if n["kind"] != "helper"]
    assert [n["path"] for n in nodes] == PATHS
    by_path = {n["path"]: n for n in nodes}
    assert by_path[""]["pid"] == tree.root_pid
    for node in nodes[1:]:
        proc = psutil.Process(node["pid"])
        assert proc.ppid() == node["ppid"] == by_path[node["parent"]]["pid"], node
    assert len(tracker_pids(tree.root_pid)) == 1, "no resource tracker: was this really spawn?"


def test_helpers_are_listed_honestly(orch_tree, orch_env):
    tree = orch_tree(TREE)
    rows = json_tree(orch_env, "spawned")
    helpers = [row for row in rows if row["kind"] == "helper"]
    root = tree.root_pid
    trackers = tracker_pids(root)
    assert len(trackers) == 1, trackers
    assert [(h["pid"], h["ppid"], h["parent"]) for h in helpers] == [(trackers[0], root, "")]
    # Every process below the root is a row, with the ppid the OS reports; nothing is made up.
    listed = {row["pid"]: row["ppid"] for row in rows}
    actual = {proc.pid: proc.ppid() for proc in descendants(root)}
    actual[root] = tree.pid  # the root's parent is the guardian, the `orch up` process
    assert listed == actual


@pytest.mark.timeout(30)
def test_killed_worker_is_restarted_under_spawn(orch_tree):
    tree = orch_tree(TREE)
    before = tree.pids()
    victim = before["sup/sup2/c"]
    os.kill(victim, signal.SIGKILL)

    def restarted():
        node = tree.node("sup/sup2/c")
        return node if node["pid"] not in (None, victim) and node["state"] == "running" else None

    node = tree.wait_for(restarted, message="sup/sup2/c to run again with a new pid")
    assert node["restarts"] == 1
    assert psutil.Process(node["pid"]).ppid() == before["sup/sup2"]
    assert gone(victim)
    after = tree.pids()
    assert {p: pid for p, pid in after.items() if p != "sup/sup2/c"} == \
           {p: pid for p, pid in before.items() if p != "sup/sup2/c"}


@pytest.mark.timeout(30)
def test_down_leaves_nothing_under_spawn(orch_tree, orch_env):
    tree = orch_tree(TREE)
    rows = json_tree(orch_env, "spawned")
    seen = {row["pid"] for row in rows}
    assert any(row["kind"] == "helper" for row in rows)
    down_code, root_code, _, err = down(tree)  # we reap the root, as a shell would
    assert root_code == 0
    assert down_code == 0, err
    alive = [pid for pid in seen if not gone(pid)]
    assert alive == [], f"left behind after `orch down`: {alive}"
    assert "orch: stopping tree 'spawned'" in tree.read_output()


def test_root_killed_leaves_nothing_under_spawn(orch_tree, orch_env):
    tree = orch_tree(TREE)
    seen = {row["pid"] for row in json_tree(orch_env, "spawned")}
    os.kill(tree.pid, signal.SIGKILL)
    tree.wait_exit()
    # Nodes die by parent-death signal; the tracker exits once its last writer is gone.
    tree.wait_for(lambda: all(gone(pid) for pid in seen), message="every process of the tree to go")
