"""The root's waits (orchestrator/root/settle.py) against a table fed by hand: each is judged
from the table after every change, reads the OS's view once, when it answers, and a pid
the OS no longer has holds it up until the node's event arrives."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.engine.loop import Loop
from orchestrator.engine.states import NodeState
from orchestrator.root import settle, view
from orchestrator.root.livetree import LiveProcess
from orchestrator.root.table import NodeRecord
from orchestrator.spec.validate import load_tree

PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "testworkers.py"
TREE = f'''
name = "t"
plugins = ["{PLUGIN}"]
[[children]]
name = "a"
worker = "t.sleep"
[[children]]
name = "sup"
  [[children.children]]
  name = "w"
  worker = "t.sleep"
'''
ROOT_PID = 1


class FakeRoot:
    """What the waits read of the root: its table, holds, generations and rows()."""

    def __init__(self, tmp_path) -> None:
        self.tree = load_tree(str(tmp_path / "t.toml"), text=TREE)
        self.table = {}
        self.held = frozenset()
        self.generation = self.applied_generation = 0
        self.supervisor = SimpleNamespace(stopping=False)
        self.gone = set()  # pids the OS no longer has, though the table may still say so
        self.scans = 0
        self.loop = Loop()
        self.waits = settle.Waits(self.loop, self.rows)
        self.replies = []
        for path, pid in (("a", 10), ("sup", 20), ("sup/w", 21)):
            self.event(path, pid, "running")

    def rows(self):
        self.scans += 1
        live = {pid: LiveProcess(pid, None, "sleeping", None, "x")
                for pid in [ROOT_PID] + [entry.pid for entry in self.table.values()]
                if pid and pid not in self.gone}
        return view.build_rows(self.tree.with_holds(self.held), self.table, live, ROOT_PID, NodeState.RUNNING, 0.0)

    def event(self, path, pid, state, failures=0) -> None:
        """As Root does with a NodeEvent: the table changes, the waits are told."""
        self.table[path] = NodeRecord(pid=pid, state=NodeState(state), restarts=0, started_at=1.0, failures=failures)
        self.waits.changed()

    def add(self, wait):
        deferred = self.waits.add(wait)
        deferred.attach(self.replies.append)
        return deferred

    def turn(self, seconds: float = 0.0) -> None:
        """Run the loop for one turn (and `seconds` more)."""
        self.loop.call_later(seconds, self.loop.stop)
        self.loop.run()


@pytest.fixture
def root(tmp_path):
    fake = FakeRoot(tmp_path)
    yield fake
    fake.loop.close()


def test_a_restart_is_answered_once_the_node_runs_with_another_pid(root):
    root.add(settle.NodeWait(root, 30.0, "restart", "a", before=10))
    root.turn()
    root.event("a", 10, "stopping")
    root.turn()
    root.event("a", None, "stopped")
    root.turn()
    assert root.replies == [] and root.scans == 0, "judged from the table alone until it holds"
    root.event("a", 11, "running")
    root.turn()
    [reply] = root.replies
    assert (reply["wanted"], reply["node"]["pid"], reply["holder"]) == (True, 11, None)
    assert root.scans == 1 and len(root.waits) == 0


def test_a_pid_the_os_no_longer_has_holds_the_wait_until_its_event(root):
    root.gone.add(11)  # exited and reaped, its supervisor's event still on its way
    root.event("a", 11, "running")
    root.add(settle.NodeWait(root, 30.0, "restart", "a", before=10))
    root.turn()
    assert root.replies == []  # the view shows it missing
    root.event("a", 12, "running")
    root.turn()
    assert [reply["node"]["pid"] for reply in root.replies] == [12]


def test_a_hold_meanwhile_ends_a_restart_below_it(root):
    root.add(settle.NodeWait(root, 30.0, "restart", "sup/w", before=21))
    root.turn()
    root.held = frozenset({"sup"})
    root.generation += 1
    root.event("sup", None, "stopped")  # the root forgets sup's subtree with it
    root.event("sup/w", None, "stopped")
    root.turn()
    assert root.replies == [], "answered before the hold was acknowledged"
    root.applied_generation = root.generation
    root.waits.changed()
    root.turn()
    [reply] = root.replies
    assert (reply["wanted"], reply["holder"], reply["node"]["state"]) == (False, "sup", "stopped")


def test_a_stop_needs_its_spec_acknowledged(root):
    root.generation = 1
    root.add(settle.NodeWait(root, 30.0, "stop", "a", before=10))
    root.event("a", None, "stopped")
    root.turn()
    assert root.replies == []
    root.applied_generation = 1
    root.waits.changed()
    root.turn()
    assert [(reply["wanted"], reply["holder"]) for reply in root.replies] == [(True, None)]


def reload_wait(root, changed=("a",)) -> settle.ReloadWait:
    root.generation = 1
    plan = {"ok": True, "tree": "t", "changes": [], "unchanged": 3, "generation": 1}
    return settle.ReloadWait(root, 30.0, root.loop, plan, set(changed))


def test_a_reload_is_judged_after_its_grace(root, monkeypatch):
    monkeypatch.setattr(settle, "RELOAD_GRACE", 0.05)
    root.add(reload_wait(root))
    root.event("a", 11, "running")
    root.turn()
    assert root.replies == []  # not acknowledged yet
    root.applied_generation = 1
    root.waits.changed()
    root.turn()
    assert root.replies == [] and root.scans == 0  # settled: the grace begins
    root.turn(0.1)
    [reply] = root.replies
    assert (reply["applied"], reply["failing"], reply["unchanged"]) == (True, [], 3)
    assert root.scans == 1


def test_a_changed_node_that_fails_during_the_grace_is_the_verdict(root):
    root.add(reload_wait(root))
    root.applied_generation = 1
    root.event("a", 11, "running")
    root.turn()
    root.event("a", None, "restarting", failures=1)
    root.turn()
    assert root.replies == [], "judged while the node was on its way"
    root.event("a", None, "backoff", failures=1)
    root.turn()
    [reply] = root.replies
    assert [(node["path"], node["state"]) for node in reply["failing"]] == [("a", "backoff")]


def test_a_reload_past_its_deadline_says_whether_it_was_applied(root):
    deferred = root.add(reload_wait(root))
    reply = deferred.expire()  # what the control server calls at the deadline
    assert (reply["applied"], reply["failing"]) == (False, [])
    assert len(root.waits) == 0


def test_a_client_gone_cancels_the_wait_and_its_grace(root):
    wait = reload_wait(root)
    deferred = root.add(wait)
    root.applied_generation = 1
    root.waits.changed()
    root.turn()
    assert wait._grace is not None
    deferred.abandon()
    assert len(root.waits) == 0 and wait._grace is None


def test_a_settled_tree_answers_a_wait_at_once(root):
    root.add(settle.SettleWait(root, 30.0))
    root.turn()
    [reply] = root.replies
    assert [row["state"] for row in reply["nodes"]] == ["running"] * 4


def test_the_deadline_is_the_stop_budget_plus_slack_or_sooner(root):
    default = root.tree.root.stop_budget() + settle.WAIT_SLACK
    assert settle.wait_timeout(root, {}) == default
    assert settle.wait_timeout(root, {"timeout": 0.5}) == 0.5
    assert settle.wait_timeout(root, {"timeout": 1e9}) == default
    assert settle.wait_timeout(root, {"timeout": True}) == default
    assert settle.wait_timeout(root, {"timeout": -1}) == default
