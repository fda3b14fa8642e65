"""`orch restart|stop|start PATH` on any node, supervisors included, checked against psutil.

A restart replaces exactly the node's subtree; a stop is a hold the root keeps
(across a restart of the supervisor above and across reloads) until `orch start`.
Commands are orch's own doing, so they never count against restart intensity.
"""
from __future__ import annotations

import functools
from typing import Tuple

import psutil
import pytest

from orchestrator.testing import gone, json_tree
from tests import helpers
from tests.helpers import ok

pytestmark = pytest.mark.timeout(40)


def tree_text(name: str = "cmd", extra: str = "", max_restarts: int = 3) -> str:
    """root -> a, sup (-> w, v, inner (-> deep)), b; `extra` is appended as more root children."""
    return helpers.tree_text(name, f'''
        [[children]]
        name = "a"
        worker = "t.sleep"
        [[children]]
        name = "sup"
        max_restarts = {max_restarts}
          [[children.children]]
          name = "w"
          worker = "t.sleep"
          [[children.children]]
          name = "v"
          worker = "t.sleep"
          [[children.children]]
          name = "inner"
            [[children.children.children]]
            name = "deep"
            worker = "t.sleep"
        [[children]]
        name = "b"
        worker = "t.sleep"
    ''' + extra)


SUBTREE = ("sup", "sup/w", "sup/v", "sup/inner", "sup/inner/deep")


# A held node (`orch stop`) has no process: left out rather than failing the check.
os_pids = functools.partial(helpers.os_pids, skip_stopped=True)


def split(before: dict, after: dict, paths) -> Tuple[dict, dict]:
    """(before, after) restricted to the nodes outside `paths`."""
    return ({p: v for p, v in before.items() if p not in paths},
            {p: v for p, v in after.items() if p not in paths})


def test_restart_worker_replaces_only_it(orch_tree):
    tree = orch_tree(tree_text())
    before = os_pids(tree)

    ok(tree.orch("restart", "sup/w"))  # one tree running: no --tree needed
    after = os_pids(tree)
    assert after["sup/w"][0] != before["sup/w"][0] and gone(*before["sup/w"])
    assert psutil.Process(after["sup/w"][0]).ppid() == before["sup"][0]
    kept_before, kept_after = split(before, after, ["sup/w"])
    assert kept_after == kept_before, "a sibling or another branch was touched"
    assert tree.node("sup/w")["restarts"] == 1


def test_restart_supervisor_replaces_its_subtree_only(orch_tree):
    tree = orch_tree(tree_text())
    before = os_pids(tree)

    ok(tree.orch("restart", "sup"))
    after = os_pids(tree)
    for path in SUBTREE:
        assert after[path][0] != before[path][0], f"{path} kept its pid through `orch restart sup`"
        assert gone(*before[path]), f"old {path} still alive"
    kept_before, kept_after = split(before, after, SUBTREE)
    assert kept_after == kept_before, "another branch was touched"


def test_stop_holds_across_supervisor_restart_and_reload_until_start(orch_tree, orch_env, tmp_path):
    tree = orch_tree(tree_text())
    before = os_pids(tree)

    ok(tree.orch("stop", "sup/w"))
    assert gone(*before["sup/w"])
    node = next(n for n in json_tree(orch_env, "cmd") if n["path"] == "sup/w")
    assert (node["state"], node["pid"], node["held"]) == ("stopped", None, True)
    assert "worker, held" in tree.orch("tree").stdout
    kept_before, kept_after = split(before, os_pids(tree), ["sup/w"])
    assert kept_after == kept_before

    ok(tree.orch("restart", "sup"))
    restarted = os_pids(tree)
    assert restarted["sup"][0] != before["sup"][0]
    assert "sup/w" not in restarted and tree.node("sup/w")["held"], "sup/w came back with its supervisor"

    edited = tmp_path / "edited.toml"
    edited.write_text(tree_text(extra='''
        [[children]]
        name = "c"
        worker = "t.sleep"
    '''))
    ok(tree.orch("reload", str(edited)))
    reloaded = os_pids(tree)
    assert "c" in reloaded
    assert "sup/w" not in reloaded and tree.node("sup/w")["held"], "a reload brought a held node back"
    assert {p: reloaded[p] for p in restarted} == restarted

    ok(tree.orch("start", "sup/w"))
    started = os_pids(tree)
    assert psutil.Process(started["sup/w"][0]).ppid() == restarted["sup"][0]
    assert not tree.node("sup/w")["held"]
    assert {p: started[p] for p in reloaded} == reloaded


def test_unknown_path_is_a_usage_error_listing_nodes(orch_tree):
    tree = orch_tree(tree_text())
    before = os_pids(tree)
    for command in ("restart", "stop", "start"):
        result = tree.orch(command, "sup/nope")
        assert result.returncode == 2, result.stderr
        assert "no node 'sup/nope'" in result.stderr
        assert "sup/w" in result.stderr and "sup/inner/deep" in result.stderr
    assert os_pids(tree) == before


def test_two_trees_need_a_tree_name(orch_tree):
    one = orch_tree(tree_text("one"), filename="one.toml")
    two = orch_tree(tree_text("two"), filename="two.toml")
    before_one, before_two = os_pids(one), os_pids(two)

    result = one.orch("restart", "sup/w")
    assert result.returncode == 2
    assert "one" in result.stderr and "two" in result.stderr
    assert (os_pids(one), os_pids(two)) == (before_one, before_two)

    ok(one.orch("restart", "sup/w", "--tree", "two"))
    assert os_pids(one) == before_one
    after_two = os_pids(two)
    assert after_two["sup/w"][0] != before_two["sup/w"][0]
    kept_before, kept_after = split(before_two, after_two, ["sup/w"])
    assert kept_after == kept_before


def test_manual_restarts_do_not_count_against_intensity(orch_tree):
    tree = orch_tree(tree_text(max_restarts=1))
    before = os_pids(tree)

    pids = [before["sup/w"][0]]
    for _ in range(3):
        ok(tree.orch("restart", "sup/w"))
        pids.append(tree.node("sup/w")["pid"])
    assert len(set(pids)) == 4
    after = os_pids(tree)
    assert tree.node("sup")["state"] == "running"
    kept_before, kept_after = split(before, after, ["sup/w"])
    assert kept_after == kept_before, "the supervisor gave up or something else moved"
    assert "giving up" not in tree.read_output()
