"""Waiting in the root until the tree has settled: `wait`, and `"wait": true` on reload and
restart/stop/start, each answered with one deferred reply instead of a client's polling.

A wait is judged from the root's own table, which the uplink keeps current (node events,
acknowledgements): nothing here polls. The OS's view (`Root.rows()`, a psutil scan) is
read once, when a wait is about to be answered: a pid the table still believes in but
the OS no longer has shows as `missing`, and the wait goes on until the node's event
arrives. The tree has settled when

- the last spec handed down is acknowledged (`applied >= generation`),
- the root is not stopping, and no node is on its way somewhere (TRANSITIONAL, engine/states.py),
- and the wait's own condition holds (a restart: the node runs with another pid...).

Orphans being stopped by the repair loop are not nodes and do not hold a wait up.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Container, Dict, List, Optional, Set

from orchestrator.engine.loop import Loop, Timer
from orchestrator.engine.states import HEALTHY, TRANSITIONAL, NodeState
from orchestrator.root.ctlserver import Deferred
from orchestrator.root.table import NOT_STARTED

if TYPE_CHECKING:
    from orchestrator.root.root import Root

NODE_KINDS = ("supervisor", "worker")
# A wait is answered at the latest this long after the tree's stop budget: a restart
# or reload stops things, then starts them.
WAIT_SLACK = 10.0
# After a reload has settled, changed nodes must stay up this long to count as
# running: a worker that crashes at once is caught here, not reported as fine.
RELOAD_GRACE = 1.0

Rows = Callable[[], List[dict]]


def wait_timeout(root: "Root", request: dict, extra: float = 0.0) -> float:
    """The wait's deadline: the tree's stop budget plus slack, or sooner if the client asks."""
    default = root.tree.root.stop_budget() + WAIT_SLACK + extra
    asked = request.get("timeout")
    if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked > 0:
        return min(float(asked), default)
    return default


def table_settled(root: "Root") -> bool:
    """Settled as far as the table knows: acknowledged, and every node at rest."""
    if root.applied_generation < root.generation or root.supervisor.stopping:
        return False
    for node in root.tree.nodes():
        if node.path and root.table.get(node.path, NOT_STARTED).state in TRANSITIONAL:
            return False
    return True


def rows_settled(rows: List[dict]) -> bool:
    """Settled as the OS sees it too: no node shown missing (or otherwise in transit)."""
    return not any(row["state"] in TRANSITIONAL for row in rows if row["kind"] in NODE_KINDS)


def not_running(rows: List[dict]) -> List[dict]:
    return [row for row in rows if row["kind"] in NODE_KINDS and row["state"] not in HEALTHY]


def holder(held: Container[str], path: str) -> Optional[str]:
    """`path` or its nearest held ancestor, if any; `held` is any container of paths."""
    while path:
        if path in held:
            return path
        path = path.rpartition("/")[0]
    return None


class _Once:
    """`rows()` read at most once per check, shared by every wait answered in it."""

    def __init__(self, rows: Rows) -> None:
        self._rows = rows
        self._value: Optional[List[dict]] = None

    def __call__(self) -> List[dict]:
        if self._value is None:
            self._value = self._rows()
        return self._value


class Wait:
    """One deferred reply. `answer(rows)` says the reply once the wait is over, else None;
    `expire()` says it at the deadline, whatever the state."""

    def __init__(self, root: "Root", timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self.deferred: Optional[Deferred] = None  # given by Waits.add

    def answer(self, rows: Rows) -> Optional[dict]:
        raise NotImplementedError

    def expire(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        """Answered or abandoned: let go of anything still armed."""


class Waits:
    """The root's open waits, checked after each turn in which the table changed."""

    def __init__(self, loop: Loop, rows: Rows) -> None:
        self._loop = loop
        self._rows = rows
        self._open: List[Wait] = []
        self._check: Optional[Timer] = None

    def add(self, wait: Wait) -> Deferred:
        """Open `wait`; its reply, for the control server to send once known."""
        wait.deferred = Deferred(wait.timeout, expire=partial(self._expire, wait), cancel=partial(self._forget, wait))
        self._open.append(wait)
        self.changed()  # it may hold already
        return wait.deferred

    def __len__(self) -> int:
        return len(self._open)

    def changed(self) -> None:
        """The table (or a hold, or an acknowledgement) changed: check the waits.

        Not in the middle of the callback that reported it but right after it: within
        one callback the table can be half-way (an exit is reported `stopped` an
        instant before its restart starts it again); between callbacks it is whole.
        """
        if self._open and self._check is None:
            self._check = self._loop.call_later(0, self._check_all)

    def _check_all(self) -> None:
        self._check = None
        rows = _Once(self._rows)
        for wait in list(self._open):
            try:
                reply = wait.answer(rows)
            except Exception as error:  # a bug in one wait must not reach the supervisor's loop
                reply = {"ok": False, "error": f"internal error while waiting: {error!r}"}
            if reply is not None:
                self._forget(wait)
                assert wait.deferred is not None  # add() sets it before the wait is open
                wait.deferred.resolve(reply)

    def _expire(self, wait: Wait) -> dict:
        self._forget(wait)
        return wait.expire()

    def _forget(self, wait: Wait) -> None:
        if wait in self._open:
            self._open.remove(wait)
        wait.close()


class SettleWait(Wait):
    """`wait`: the tree as it is once settled."""

    def answer(self, rows: Rows) -> Optional[dict]:
        if table_settled(self.root) and rows_settled(rows()):
            return self._reply(rows())
        return None

    def expire(self) -> dict:
        return self._reply(self.root.rows())

    def _reply(self, rows: List[dict]) -> dict:
        return {"ok": True, "tree": self.root.tree.name, "generation": self.root.generation,
                "applied": self.root.applied_generation, "nodes": rows}


class NodeWait(Wait):
    """restart/stop/start PATH: settled, and the node where the command sends it
    (a hold on it or an ancestor meanwhile ends a restart or start: it will not run)."""

    def __init__(self, root: "Root", timeout: float, command: str, path: str, before: Optional[int]) -> None:
        super().__init__(root, timeout)
        self.command, self.path, self.before = command, path, before

    def wanted(self, state: str, pid: Optional[int]) -> bool:
        """`state` is the table's NodeState, or a row's (a str, equal to one)."""
        if self.command == "stop":
            return state == NodeState.STOPPED and pid is None
        if self.command == "start":
            return state == NodeState.RUNNING
        return state == NodeState.RUNNING and pid != self.before

    def _held(self, held: Container[str]) -> Optional[str]:
        return None if self.command == "stop" else holder(held, self.path)

    def answer(self, rows: Rows) -> Optional[dict]:
        entry = self.root.table.get(self.path, NOT_STARTED)
        if not table_settled(self.root):
            return None
        gone = self.root.tree.find(self.path) is None
        if not (gone or self.wanted(entry.state, entry.pid)
                or self._held(self.root.held)):
            return None
        node = _row(rows(), self.path)
        if not rows_settled(rows()) or not (node is None or self.wanted(node["state"], node["pid"])
                                            or self._held(_held_paths(rows()))):
            return None  # the OS disagrees with the table (a pid gone unnoticed): wait on
        return self._reply(rows())

    def expire(self) -> dict:
        return self._reply(self.root.rows())

    def _reply(self, rows: List[dict]) -> dict:
        """The node's row, whether it is where the command sent it, and who holds it if not."""
        node = _row(rows, self.path)
        wanted = node is not None and self.wanted(node["state"], node["pid"])
        holder_path = None if wanted or node is None else self._held(_held_paths(rows))
        return {"ok": True, "tree": self.root.tree.name, "path": self.path, "pid": self.before,
                "generation": self.root.generation, "node": node, "wanted": wanted, "holder": holder_path}


class ReloadWait(Wait):
    """reload: settled with the new spec applied, then RELOAD_GRACE for the changed nodes.

    The verdict lists what does not run: changed nodes that failed during the grace
    (judged by their `failures` counter, not pid changes: a restart someone asked for
    meanwhile, or a sibling's restart round, is not a crash), else every node neither
    running nor stopped.
    """

    def __init__(self, root: "Root", timeout: float, loop: Loop, plan: dict, changed: Set[str]) -> None:
        super().__init__(root, timeout)
        self.loop, self.plan, self.changed = loop, plan, changed
        self.generation = plan["generation"]
        self.baseline: Optional[Dict[str, int]] = None  # failures of changed nodes once settled
        self.grace_over = False
        self._grace: Optional[Timer] = None

    def answer(self, rows: Rows) -> Optional[dict]:
        if not table_settled(self.root):
            return None
        if self.baseline is None:
            self._begin_grace()
            return None
        if not (self.grace_over or self._crashed(self._table_rows())):
            return None
        current = rows()
        if not rows_settled(current):
            return None  # a pid gone unnoticed: its event is on the way
        return self._reply(current)

    def _begin_grace(self) -> None:
        self.baseline = {path: self.root.table.get(path, NOT_STARTED).failures for path in self.changed}
        self._grace = self.loop.call_later(RELOAD_GRACE, self._end_grace)

    def _end_grace(self) -> None:
        self._grace = None
        self.grace_over = True
        self.root.waits.changed()

    def _table_rows(self) -> List[dict]:
        return [{"path": path, "failures": self.root.table.get(path, NOT_STARTED).failures}
                for path in self.changed]

    def _crashed(self, rows: List[dict]) -> List[dict]:
        baseline = self.baseline or {}
        return [row for row in rows
                if row["path"] in baseline and row.get("failures", 0) > baseline[row["path"]]]

    def expire(self) -> dict:
        if self.root.applied_generation < self.generation:
            return dict(self.plan, applied=False, failing=[])
        return self._reply(self.root.rows())

    def _reply(self, rows: List[dict]) -> dict:
        return dict(self.plan, applied=True, failing=self._crashed(rows) or not_running(rows))

    def close(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None


def _row(rows: List[dict], path: str) -> Optional[dict]:
    return next((row for row in rows if row["path"] == path and row["kind"] in NODE_KINDS), None)


def _held_paths(rows: List[dict]) -> Set[str]:
    return {row["path"] for row in rows if row.get("held")}
