"""`max_memory`: one timer per supervisor reads the RSS of its limited children from /proc.

A worker's figure is the RSS sum of its process group (the worker and the helpers
it forked); a supervisor child's is the sum over the process groups of its whole
subtree (its own and every node below it, whose pids reach us in their events).
Group membership comes from getpgid(2) on each pid in /proc (a system call, no file
read), and RSS from /proc/PID/statm of the members only, so a check costs one
directory listing plus a system call per process, and one small read per member.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from orchestrator.engine.loop import Loop, Timer

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# (key, group leader pids, limit in bytes) for each limited child that runs.
Target = Tuple[object, Iterable[int], int]


def group_rss(groups: Dict[int, object]) -> Dict[object, int]:
    """RSS in bytes per owner, summed over the processes whose group leader is in `groups`."""
    totals: Dict[object, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return totals
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            owner = groups.get(os.getpgid(pid))
        except OSError:
            continue  # gone meanwhile
        if owner is None:
            continue
        rss = _rss(pid)
        totals[owner] = totals.get(owner, 0) + rss
    return totals


def _rss(pid: int) -> int:
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        fields = os.read(fd, 256).split()
    except OSError:
        return 0
    finally:
        os.close(fd)
    return int(fields[1]) * PAGE_SIZE if len(fields) > 1 else 0


class MemoryWatch:
    """Every `interval` seconds, call `over(key, rss, limit)` for each target above its limit.

    No timer at all while there is no target to check (`configure(..., wanted=False)`).
    """

    def __init__(self, loop: Loop, targets: Callable[[], List[Target]],
                 over: Callable[[object, int, int], None]) -> None:
        self._loop = loop
        self._targets = targets
        self._over = over
        self._timer: Optional[Timer] = None
        self._interval = 0.0

    def configure(self, interval: float, wanted: bool) -> None:
        if not wanted:
            self.stop()
            return
        if self._timer is not None and interval == self._interval:
            return
        self.stop()
        self._interval = interval
        self._timer = self._loop.call_later(interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._tick)
        targets = self._targets()
        if not targets:
            return
        groups: Dict[int, object] = {}
        limits: Dict[object, int] = {}
        for key, leaders, limit in targets:
            limits[key] = limit
            for leader in leaders:
                groups[leader] = key
        for key, rss in group_rss(groups).items():
            if rss > limits[key]:
                self._over(key, rss, limits[key])


def describe_bytes(count: int) -> str:
    for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return f"{count}B"
