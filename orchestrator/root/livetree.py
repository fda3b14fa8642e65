"""The OS's view of a running tree: a psutil snapshot of the root and its descendants."""
from __future__ import annotations

import os
import time
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import attrs
import psutil

_ATTRS = ["pid", "ppid", "status", "create_time", "name"]
# Read in the same pass (psutil's oneshot: cpu_times comes from the /proc/PID/stat already
# read for the attributes above; memory_info adds /proc/PID/statm).
_USAGE = ["memory_info", "cpu_times"]


@attrs.frozen
class LiveProcess:
    pid: int
    ppid: Optional[int]
    status: Optional[str]
    create_time: Optional[float]
    name: Optional[str]
    rss: Optional[int] = None  # bytes
    cpu: Optional[float] = None  # user + system CPU seconds so far
    pgid: Optional[int] = None


def snapshot(root_pid: int) -> Dict[int, LiveProcess]:
    """Every live process at or below `root_pid`, read in one pass over /proc."""
    by_pid: Dict[int, dict] = {}
    for proc in psutil.process_iter(_ATTRS + _USAGE, ad_value=None):
        info = proc.info
        by_pid[info["pid"]] = info
    children: Dict[Optional[int], List[int]] = {}
    for info in by_pid.values():
        children.setdefault(info["ppid"], []).append(info["pid"])
    found: Dict[int, LiveProcess] = {}
    stack = [root_pid] if root_pid in by_pid else []
    while stack:
        pid = stack.pop()
        found[pid] = _live(by_pid[pid])
        stack.extend(children.get(pid, ()))
    return found


def _live(info: dict) -> LiveProcess:
    memory, times = info["memory_info"], info["cpu_times"]
    try:
        pgid: Optional[int] = os.getpgid(info["pid"])
    except OSError:
        pgid = None
    return LiveProcess(**{key: info[key] for key in _ATTRS},
                       rss=memory.rss if memory is not None else None,
                       cpu=times.user + times.system if times is not None else None, pgid=pgid)


class CpuMeter:
    """CPU percent of one core since the previous sample, as psutil's
    `cpu_percent(interval=None)` measures it: None on a process's first sample.

    Keeps (CPU seconds, monotonic time) per (pid, create_time) from the last sample;
    processes gone since are forgotten at the next sample.
    """

    def __init__(self) -> None:
        self._last: Dict[Tuple[int, Optional[float]], Tuple[float, float]] = {}

    def percents(self, live: Mapping[int, LiveProcess], sample: bool = True) -> Dict[int, Optional[float]]:
        """pid -> percent for every process in `live`; `sample` makes this the new baseline."""
        now = time.monotonic()
        percents: Dict[int, Optional[float]] = {}
        current: Dict[Tuple[int, Optional[float]], Tuple[float, float]] = {}
        for proc in live.values():
            percents[proc.pid] = None
            if proc.cpu is None:
                continue
            key = (proc.pid, proc.create_time)
            current[key] = (proc.cpu, now)
            previous = self._last.get(key)
            if previous is not None and now > previous[1]:
                percents[proc.pid] = round(max(0.0, proc.cpu - previous[0]) / (now - previous[1]) * 100, 1)
        if sample:
            self._last = current
        return percents


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
