"""Leave nothing behind: SIGKILL every process below this one and reap it, until none is left.

The last act of the guardian once the root has exited, and of the root once its
tree has stopped. Both are child subreapers, so whatever dies above a descendant
reparents it to the caller: a caller left with no children has no descendants.
"""
from __future__ import annotations

import os
import signal
from typing import Iterable, List, Set

from orchestrator.engine import osproc

# A process forked after a scan and orphaned before the next one is reparented
# to us alive, which raises no SIGCHLD: look again after at most this long.
RESCAN_AFTER = 0.05


def kill_descendants() -> Set[int]:
    """SIGKILL every descendant, reap our children, repeat until we have none.

    Returns the pids it signalled. Reaps by pid from our own children list, never
    waitpid(-1), so a caller that still has children it reaps itself must not call
    this. Blocks SIGCHLD while it runs, so none is lost between a scan and the wait.
    """
    signalled: Set[int] = set()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        while True:
            children = osproc.children_of_self()
            if not children:
                return signalled
            # Top down, so a parent stops forking before its children are signalled.
            # A pid is signalled microseconds after it was listed: for another process
            # to hold it by then, the pid space would have to wrap in between.
            for pid in _below(children):
                osproc.send(pid, signal.SIGKILL)
                signalled.add(pid)
            for pid in children:
                osproc.reap_if_dead(pid)
            if osproc.children_of_self():
                signal.sigtimedwait({signal.SIGCHLD}, RESCAN_AFTER)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _below(children: Iterable[int]) -> List[int]:
    """`children` and all their descendants, parents before children."""
    found = list(children)
    for pid in found:  # grows while we walk it: breadth first
        found.extend(osproc.children_of(pid))
    return found
