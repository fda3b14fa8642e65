"""The root's repair loop: adopt and stop orphans, reap them by pid, evict leftovers of earlier runs.

Node exits are seen at once by each supervisor's pidfds; this covers what they
cannot see: processes reparented to the root (it is the tree's child subreaper)
and processes titled as nodes of this tree that are not part of it.
"""
from __future__ import annotations

import os
import signal
from functools import partial
from typing import TYPE_CHECKING, AbstractSet, Callable, Dict, Set

from orchestrator.root import control
from orchestrator.root import livetree
from orchestrator.engine import osproc
from orchestrator.engine import titles
from orchestrator.engine.loop import Loop
from orchestrator.engine.output import log

if TYPE_CHECKING:  # psutil is imported only when a process claims to be ours (titles.claimants)
    import psutil

# Orphans are usually already dead (parent-death signals) or die at SIGTERM;
# the periodic pass only catches what escaped both, so it can be slow and cheap.
ORPHAN_CHECK_INTERVAL = 2.0
LEFTOVER_SCAN_INTERVAL = 30.0
ORPHAN_STOP_GRACE = 2.0
SIGCHLD_COALESCE = 0.02
LEFTOVER_STOP_GRACE = 5.0


class OrphanRepair:
    """Runs inside the root's loop; `known_children` names the pids the root started itself."""

    def __init__(self, loop: Loop, tree_name: str, known_children: Callable[[], AbstractSet[int]],
                 node_pids: Callable[[], Set[int]]) -> None:
        self._loop = loop
        self._tree = tree_name
        self._known = known_children
        self._node_pids = node_pids  # every node's pid the table holds: ours, not leftovers
        self.adopted: Dict[int, float] = {}  # orphan pid -> when we adopted it (its stop began)
        self.evicting: Dict[int, float] = {}  # leftover pid -> create_time
        self._stopped = False
        self._check_pending = False
        self.on_adopt: Callable[[int], None] = lambda pid: None  # the root records an event

    def start(self) -> None:
        osproc.become_subreaper()
        self._loop.on_signal(signal.SIGCHLD, self._on_sigchld)
        self.evict_leftovers()
        self._loop.call_later(ORPHAN_CHECK_INTERVAL, self._periodic_children)
        self._loop.call_later(LEFTOVER_SCAN_INTERVAL, self._periodic_leftovers)

    # ----- orphans reparented to us -------------------------------------------

    def _on_sigchld(self) -> None:
        # One check per burst: a restart storm or a teardown raises SIGCHLD for each
        # of N children, and each check reads all N; orphans wait at most this long.
        if not self._check_pending:
            self._check_pending = True
            self._loop.call_later(SIGCHLD_COALESCE, self._coalesced_check)

    def _coalesced_check(self) -> None:
        self._check_pending = False
        self.check_children()

    def check_children(self) -> None:
        """Reap dead orphans and adopt live ones, touching only pids we did not start.

        Never waitpid(-1): multiprocessing would lose its own children's status.
        """
        for pid in set(osproc.children_of_self()) - self._known():
            if osproc.reap_if_dead(pid):
                self.adopted.pop(pid, None)
            elif pid not in self.adopted:
                self._adopt(pid)

    def _adopt(self, pid: int) -> None:
        self.adopted[pid] = self._loop.now()
        log(f"process {pid} was orphaned inside the tree; stopping it")
        self.on_adopt(pid)
        osproc.send(pid, signal.SIGTERM)
        self._loop.call_later(ORPHAN_STOP_GRACE, lambda: self._kill_orphan(pid))

    def _kill_orphan(self, pid: int) -> None:
        if pid in self.adopted:
            osproc.send(pid, signal.SIGKILL)

    def _periodic_children(self) -> None:
        if self._stopped:
            return
        self.check_children()
        self._loop.call_later(ORPHAN_CHECK_INTERVAL, self._periodic_children)

    # ----- leftovers of an earlier run -------------------------------------------

    def evict_leftovers(self) -> None:
        """Stop processes titled as nodes of this tree that are not our descendants."""
        mine = self._node_pids() | {os.getpid()}
        for proc in titles.claimants(self._tree, skip=mine):
            if proc.pid in self.evicting or not _leftover_of_ours(proc):
                continue
            import psutil  # claimants() imported it: it yielded a process

            try:
                created = proc.create_time()
            except psutil.Error:
                continue
            log(f"process {proc.pid} ({' '.join(proc.info['cmdline'] or [])}) claims to be part of "
                f"tree {self._tree!r} but is not; stopping it")
            self.evicting[proc.pid] = created
            livetree.signal_if_same(proc.pid, created, signal.SIGTERM)
            self._loop.call_later(LEFTOVER_STOP_GRACE, partial(self._kill_leftover, proc.pid))

    def _kill_leftover(self, pid: int) -> None:
        created = self.evicting.pop(pid, None)
        if created is not None:
            livetree.signal_if_same(pid, created, signal.SIGKILL)

    def _periodic_leftovers(self) -> None:
        if self._stopped:
            return
        self.evict_leftovers()
        self._loop.call_later(LEFTOVER_SCAN_INTERVAL, self._periodic_leftovers)

    def drifting(self) -> Set[int]:
        return set(self.adopted) | set(self.evicting)

    def finish(self) -> None:
        """At exit: nothing adopted may outlive the root."""
        self._stopped = True
        for pid in list(self.adopted):
            osproc.send(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.adopted.clear()


def _leftover_of_ours(proc: psutil.Process) -> bool:
    """A claimant is a leftover of this tree only if it is not one of our processes
    (a node the table does not hold yet, a helper that inherited its worker's title)
    and it ran with our run directory: a tree of the same name under another
    ORCH_RUN_DIR is somebody else's."""
    import psutil

    try:
        if any(parent.pid == os.getpid() for parent in proc.parents()):
            return False
        return control.run_base(proc.environ(), proc.uids().real) == control.run_base()
    except psutil.Error:
        return False
