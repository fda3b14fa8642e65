"""`max_memory`: one timer per supervisor reads the RSS of its limited children from /proc.

A worker's figure is the RSS sum of its process group (the worker and the helpers
it forked); a supervisor child's is the sum over the process groups of its whole
subtree (its own and every node below it, whose pids reach us in their events).
Members are found by walking down from each group leader (the limited child, or a
node of its subtree) through /proc/PID/task/TID/children, keeping the descendants
still in the leader's group; one read of /proc/PID/stat gives a process's group,
thread count and RSS. A check so costs two small reads per member (more for a
multi-threaded one), whatever else runs on the machine. A group member orphaned
by the death of its parent (reparented to the root, the tree's subreaper) is out
of reach of the walk and no longer counted.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from orchestrator.engine import osproc
from orchestrator.engine.loop import Loop, Timer

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# (key, group leader pids, limit in bytes) for each limited child that runs.
Target = Tuple[object, Iterable[int], int]


def group_rss(groups: Dict[int, object]) -> Dict[object, int]:
    """RSS in bytes per owner, summed over the members of each group whose leader is in `groups`.

    A group's members are its leader and the leader's descendants still in its group,
    found by walking /proc children files down from the leader (a descendant in another
    group, such as a setsid helper, is left out, and so is everything below it).
    """
    totals: Dict[object, int] = {}
    for leader, owner in groups.items():
        totals[owner] = totals.get(owner, 0) + _group_rss(leader, groups)
    return totals


def _group_rss(leader: int, leaders: Dict[int, object]) -> int:
    """RSS of the group led by `leader`; a child in `leaders` (a node below a supervisor
    child, leading a group of its own) is skipped unread: it is walked as a leader."""
    total = 0
    pending = [leader]
    while pending:
        pid = pending.pop()
        stat = _stat(pid)
        if stat is None or stat[0] != leader:
            continue  # gone meanwhile, or not (or no longer) in the group
        _, threads, rss = stat
        total += rss
        pending.extend(child for child in osproc.children_of(pid, threads) if child not in leaders)
    return total


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _stat(pid: int) -> Optional[Tuple[int, int, int]]:
    """(process group, thread count, RSS in bytes) of `pid` from one read of /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = _read(f"/proc/{pid}/stat").rpartition(b")")[2].split()
    if len(fields) < 22:
        return None
    # fields[0] is field 3 (state): pgrp is field 5, num_threads 20, rss 24 (pages).
    return int(fields[2]), int(fields[17]), int(fields[21]) * PAGE_SIZE


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
