"""The OS's view of a running tree: a psutil snapshot of the root and its descendants."""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional

import attrs
import psutil

_ATTRS = ["pid", "ppid", "status", "create_time", "name"]


@attrs.frozen
class LiveProcess:
    pid: int
    ppid: Optional[int]
    status: Optional[str]
    create_time: Optional[float]
    name: Optional[str]


def snapshot(root_pid: int) -> Dict[int, LiveProcess]:
    """Every live process at or below `root_pid`, read in one pass over /proc."""
    by_pid: Dict[int, LiveProcess] = {}
    for proc in psutil.process_iter(_ATTRS, ad_value=None):
        info = proc.info
        by_pid[info["pid"]] = LiveProcess(**{key: info[key] for key in _ATTRS})
    children: Dict[Optional[int], List[int]] = {}
    for live in by_pid.values():
        children.setdefault(live.ppid, []).append(live.pid)
    found: Dict[int, LiveProcess] = {}
    stack = [root_pid] if root_pid in by_pid else []
    while stack:
        pid = stack.pop()
        found[pid] = by_pid[pid]
        stack.extend(children.get(pid, ()))
    return found


def is_gone(pid: int, create_time: Optional[float] = None) -> bool:
    """True once `pid` has exited: gone, a zombie awaiting its parent, or reused."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def signal_if_same(pid: int, create_time: Optional[float], signum: int) -> bool:
    """Signal `pid` only if it is still the process created at `create_time` (pids get
    reused); True if it was signalled."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return False
        proc.send_signal(signum)
        return True
    except psutil.Error:
        return False


def wait_gone(pids: Iterable[int], timeout: float) -> List[int]:
    """Wait until every pid has exited (a zombie counts: it is only waiting to be
    reaped by a parent we do not control). Returns the pids still alive.

    This runs in the CLI, not in a supervisor loop, and other processes cannot be
    waited on without polling; the interval grows to keep the cost low.
    """
    watched = {pid: _create_time(pid) for pid in pids}
    deadline = time.monotonic() + timeout
    interval = 0.005
    while True:
        watched = {pid: created for pid, created in watched.items() if not is_gone(pid, created)}
        if not watched or time.monotonic() >= deadline:
            return sorted(watched)
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


def _create_time(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
