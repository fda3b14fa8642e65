"""Declarative apply against real processes: `orch reload` / `orch diff` / SIGHUP touch only what changed.

Every "kept" claim is checked twice: the pid `orch tree` reports, and psutil's
(pid, create_time) for it, so a pid reused by a new process is never mistaken
for the old one. Start order is read from pid allocation order, stop order from
the `t.record` log (a supervisor waits for each child before signalling the next).
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Dict, Tuple

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import RunningTree, gone, json_tree, run_orch
from tests.helpers import created_in_order, lines, ok, os_pids, recorder, tree_text

pytestmark = pytest.mark.timeout(40)


# ----- helpers ---------------------------------------------------------------------


def sleeper(table: str, name: str, extra: str = "") -> str:
    return f'\n[[{table}]]\nname = "{name}"\nworker = "t.sleep"\n{extra}\n'


def write(tree: RunningTree, text: str, filename: str = "next.toml") -> Path:
    file = tree.file.with_name(filename)
    file.write_text(text)
    return file


def reload(tree: RunningTree, text: str, *flags: str):
    return tree.orch("reload", str(write(tree, text)), *flags)


# ----- unchanged nodes keep their processes; changed ones get new ones ---------------------


def three_levels(log: Path, label_x: str = "x1") -> str:
    """root -> front, sup (-> a, inner (-> x, y)), back."""
    return tree_text("rl", sleeper("children", "front") + '''
[[children]]
name = "sup"
''' + sleeper("children.children", "a") + '''
[[children.children]]
name = "inner"
''' + recorder("x", log, label_x, "children.children.children")
        + sleeper("children.children.children", "y") + sleeper("children", "back"))


def test_reload_keeps_every_unchanged_pid_and_restarts_a_changed_node(orch_tree, tmp_path):
    log = tmp_path / "log"
    tree = orch_tree(three_levels(log))
    before = os_pids(tree)
    assert len(before) == 8

    same = reload(tree, three_levels(log))
    ok(same)
    assert "0 changes applied; 8 nodes unchanged" in same.stdout
    assert os_pids(tree) == before, "a reload of the same file touched a process"

    changed = three_levels(log, label_x="x2")
    plan = json.loads(tree.orch("diff", str(write(tree, changed)), "--json").stdout)
    assert plan == {"changes": [{"op": "restart", "path": "sup/inner/x", "keys": ["args"]}], "unchanged": 7}
    ok(reload(tree, changed))
    after = os_pids(tree)

    old_x = before.pop("sup/inner/x")
    new_x = after.pop("sup/inner/x")
    assert after == before, "only sup/inner/x may have a new process"
    assert new_x[0] != old_x[0] and gone(*old_x)
    assert psutil.Process(new_x[0]).ppid() == before["sup/inner"][0]
    assert lines(log) == ["start x1", "stop x1", "start x2"]


def live_keys_tree(restart="never", stop_timeout=5.0, daemon="false", backoff=0.1,
                   max_restarts=3, within=5.0) -> str:
    """One node per live key; the arguments are the values to write."""
    return tree_text("live", f'''
[[children]]
name = "r"
worker = "t.sleep"
restart = "{restart}"
[[children]]
name = "st"
worker = "t.sleep"
stop_timeout = {stop_timeout}
[[children]]
name = "d"
worker = "t.sleep"
daemon = {daemon}
[[children]]
name = "b"
worker = "t.sleep"
backoff = {backoff}
[[children]]
name = "s1"
max_restarts = {max_restarts}
  [[children.children]]
  name = "w"
  worker = "t.sleep"
[[children]]
name = "s2"
within = {within}
  [[children.children]]
  name = "w"
  worker = "t.sleep"
''')


def test_live_key_changes_keep_pids_and_take_effect(orch_tree):
    tree = orch_tree(live_keys_tree())
    before = os_pids(tree)
    text = live_keys_tree(restart="always", stop_timeout=1.0, daemon="true", backoff=0.5,
                          max_restarts=9, within=9.0)
    plan = json.loads(tree.orch("diff", str(write(tree, text)), "--json").stdout)
    assert sorted((c["op"], c["path"], tuple(c["keys"])) for c in plan["changes"]) == [
        ("update", "b", ("backoff",)),
        ("update", "d", ("daemon",)),
        ("update", "r", ("restart",)),
        ("update", "s1", ("max_restarts",)),
        ("update", "s2", ("within",)),
        ("update", "st", ("stop_timeout",)),
    ]
    assert plan["unchanged"] == 3  # root, s1/w, s2/w

    ok(reload(tree, text))
    assert os_pids(tree) == before, "a live-key change must not restart anything"

    # r was `restart = "never"`; the reload made it "always", so a SIGKILL now restarts it.
    old = before["r"][0]
    os.kill(old, signal.SIGKILL)
    node = tree.wait_for(lambda: (n := tree.node("r"))["state"] == "running" and n["pid"] not in (None, old) and n,
                         message="r restarted under its new restart rule")
    assert psutil.Process(node["pid"]).ppid() == tree.root_pid
    assert gone(old)


# ----- adds, removes, moves ---------------------------------------------------------


def add_remove_tree(log: Path, children: list) -> str:
    return tree_text("ar", '''
[[children]]
name = "sup"
max_restarts = 0
''' + "".join(recorder(name, log, table="children.children", stop_timeout=2.0) for name in children))


def test_added_start_in_order_removed_stop_in_reverse_and_are_not_failures(orch_tree, tmp_path):
    """max_restarts = 0: if orch counted its own stops as exits, the supervisor would give up."""
    log = tmp_path / "log"
    tree = orch_tree(add_remove_tree(log, ["r1", "r2", "stay", "r3"]))
    before = os_pids(tree)
    first_pid = max(pid for pid, _ in before.values())

    ok(reload(tree, add_remove_tree(log, ["n1", "stay", "n2", "n3"])))
    for path in ("sup/r1", "sup/r2", "sup/r3"):
        assert gone(*before[path]), f"{path} still alive after `orch reload` returned"
    stops = [line for line in lines(log) if line.startswith("stop")]
    assert stops == ["stop r3", "stop r2", "stop r1"], "removed nodes stop in reverse spec order, each its record"

    after = os_pids(tree)
    for path in ("", "sup", "sup/stay"):
        assert after[path] == before[path], f"{path} was touched"
    assert created_in_order([after[p][0] for p in ("sup/n1", "sup/n2", "sup/n3")], first_pid)
    assert tree.node("sup")["restarts"] == 0


def test_removed_node_is_gone_when_reload_returns(orch_tree):
    """A worker that ignores SIGTERM is SIGKILLed after its own stop_timeout, before `orch reload` returns."""
    keep = sleeper("children.children", "keep")
    slow = sleeper("children.children", "slow", 'stop_timeout = 0.5').replace("t.sleep", "t.ignore_term")
    tree = orch_tree(tree_text("rm", '[[children]]\nname = "sup"\n' + keep + slow))
    before = os_pids(tree)

    ok(reload(tree, tree_text("rm", '[[children]]\nname = "sup"\n' + keep)))
    assert gone(*before["sup/slow"]), "removed sup/slow is still alive after `orch reload` returned"
    assert "sup/slow did not stop within 0.5s; sending SIGKILL" in tree.read_output()
    assert os_pids(tree) == {path: value for path, value in before.items() if path != "sup/slow"}


def test_node_moved_under_another_parent_is_stopped_and_started_there(orch_tree):
    moved = sleeper("children", "m")
    tree = orch_tree(tree_text("mv", moved + '[[children]]\nname = "sup"\n' + sleeper("children.children", "w")))
    before = os_pids(tree)

    file = write(tree, tree_text("mv", '[[children]]\nname = "sup"\n' + sleeper("children.children", "w")
                                 + sleeper("children.children", "m")))
    assert tree.orch("diff", str(file)).stdout.splitlines()[:2] == ["- remove  m", "+ add     sup/m"]
    ok(tree.orch("reload", str(file)))
    assert gone(*before["m"]), "the old process of m outlived the reload"
    after = os_pids(tree)
    assert after["sup/m"][0] != before["m"][0]
    assert psutil.Process(after["sup/m"][0]).ppid() == before["sup"][0]
    assert {p: v for p, v in after.items() if p != "sup/m"} == {p: v for p, v in before.items() if p != "m"}


def test_replicas_scale_without_touching_surviving_instances(orch_tree, orch_env):
    def text(count: int) -> str:
        return tree_text("rep", sleeper("children", "first") + sleeper("children", "web", f"replicas = {count}"))

    tree = orch_tree(text(3))
    shown = [node["path"] for node in json_tree(orch_env, "rep") if node["kind"] == "worker"]
    assert shown == ["first", "web#0", "web#1", "web#2"]
    three = os_pids(tree)

    ok(reload(tree, text(5)))
    five = os_pids(tree)
    assert {path: five[path] for path in three} == three, "scaling up touched an existing instance"
    assert sorted(set(five) - set(three)) == ["web#3", "web#4"]

    ok(reload(tree, text(2)))
    two = os_pids(tree)
    assert set(two) == {"", "first", "web#0", "web#1"}
    assert {path: two[path] for path in two} == {path: five[path] for path in two}
    for path in ("web#2", "web#3", "web#4"):
        assert gone(*five[path]), f"{path} outlived the scale-down"


# ----- refusals and failures --------------------------------------------------------------


BROKEN = '''
[[children]]
name = "a"
worker = "t.sleep"
deamon = true

[[children]]
name = "b"
worker = "t.sleep"
restart = "sometimes"
'''


def test_invalid_file_changes_nothing_and_reports_like_validate(orch_tree, orch_env):
    tree = orch_tree(tree_text("inv", sleeper("children", "a") + sleeper("children", "b")))
    before = os_pids(tree)
    bad = write(tree, tree_text("inv", BROKEN))

    result = tree.orch("reload", str(bad))
    validate = run_orch("validate", str(bad), env=orch_env)
    assert (result.returncode, validate.returncode) == (2, 2)
    located = [line for line in result.stderr.splitlines() if line.startswith(f"{bad}:")]
    assert len(located) == 2 and all(re.match(rf"{re.escape(str(bad))}:\d+: ", line) for line in located)
    assert located == [line for line in validate.stderr.splitlines() if line.startswith(f"{bad}:")]
    assert "Traceback" not in result.stderr
    assert os_pids(tree) == before


def test_file_of_another_tree_is_refused(orch_tree, monkeypatch):
    tree = orch_tree(tree_text("mine", sleeper("children", "a")))
    before = os_pids(tree)
    other = write(tree, tree_text("theirs", sleeper("children", "a") + sleeper("children", "b")))

    result = tree.orch("reload", str(other))
    assert result.returncode == 1
    assert "'theirs' is not running" in result.stderr
    # Asked directly, the root refuses a file that names another tree.
    monkeypatch.setenv(control.ENV_RUN_DIR, tree.env[control.ENV_RUN_DIR])
    reply = control.request("mine", {"cmd": "reload", "file": str(other), "text": other.read_text()})
    assert not reply["ok"]
    assert "describes tree 'theirs'" in reply["error"] and "nothing was changed" in reply["error"]
    assert os_pids(tree) == before


def half_way_tree(bad: str = "") -> str:
    return tree_text("half", sleeper("children", "a") + '''
[[children]]
name = "sup"
max_restarts = 1000
within = 1.0
''' + sleeper("children.children", "w") + bad)


CRASHER = '''
[[children.children]]
name = "bad"
worker = "t.exit"
args = { code = 1 }
restart = "on-failure"
'''


def test_reload_that_fails_half_way_says_so_and_a_fixed_file_recovers(orch_tree, orch_env):
    tree = orch_tree(half_way_tree())
    before = os_pids(tree)

    result = reload(tree, half_way_tree(CRASHER))
    assert result.returncode == 1, f"a reload whose new node crash-loops must fail\n{result.stderr}"
    assert "sup/bad" in result.stderr

    def explained():
        node = next(n for n in json_tree(orch_env, "half") if n["path"] == "sup/bad")
        return node["state"] in ("failed", "backoff") and node["restarts"] > 0
    tree.wait_for(explained, message="sup/bad shown as failing with restarts > 0")
    assert os_pids_except(tree, "sup/bad") == before

    fixed = reload(tree, half_way_tree(CRASHER.replace('worker = "t.exit"\nargs = { code = 1 }', 'worker = "t.sleep"')))
    ok(fixed)
    nodes = [node for node in json_tree(orch_env, "half") if node["kind"] != "helper"]
    assert all(node["state"] == "running" for node in nodes), nodes
    assert os_pids_except(tree, "sup/bad") == before


def os_pids_except(tree: RunningTree, path: str) -> Dict[str, Tuple[int, float]]:
    """Like os_pids, for every node but `path` (which may be between processes)."""
    nodes = {node["path"]: node for node in tree.nodes() if node["kind"] != "helper" and node["path"] != path}
    return {p: (node["pid"], psutil.Process(node["pid"]).create_time()) for p, node in nodes.items()}


# ----- SIGHUP and diff ----------------------------------------------------------------------


def test_sighup_reloads_the_file_the_tree_started_from(orch_tree):
    tree = orch_tree(tree_text("hup", sleeper("children", "a")))
    before = os_pids(tree)

    tree.file.write_text(tree_text("hup", sleeper("children", "a") + sleeper("children", "added")))
    os.kill(tree.pid, signal.SIGHUP)
    node = tree.wait_for(lambda: (n := tree.node("added"))["state"] == "running" and n,
                         message="the node added to the file to run after SIGHUP")
    assert psutil.Process(node["pid"]).ppid() == tree.root_pid
    assert {path: os_pids(tree)[path] for path in before} == before


def test_diff_prints_the_plan_and_changes_nothing(orch_tree, tmp_path):
    log = tmp_path / "log"
    start = tree_text("df", recorder("gone", log) + recorder("args", log, "v1")
                      + sleeper("children", "live") + sleeper("children", "same"))
    tree = orch_tree(start)
    before = os_pids(tree)
    edited = tree_text("df", recorder("args", log, "v2") + sleeper("children", "live", 'restart = "always"')
                       + sleeper("children", "same") + sleeper("children", "new"))
    file = write(tree, edited)

    first = tree.orch("diff", str(file))
    ok(first)
    assert first.stdout.splitlines() == [
        "- remove  gone",
        "~ restart args (args)",
        "= update  live (restart) in place",
        "+ add     new",
        "4 changes planned; 2 nodes unchanged",
    ]
    assert tree.orch("diff", str(file)).stdout == first.stdout, "diff applied something"
    assert os_pids(tree) == before
    assert sorted(lines(log)) == ["start gone", "start v1"]
