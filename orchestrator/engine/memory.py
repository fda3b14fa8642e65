"""`max_memory`: the RSS of process groups, read from /proc.

Every node is a process group leader. A group's members are found by walking down
from its leader through /proc/PID/task/TID/children, keeping the descendants still
in the leader's group; one read of /proc/PID/stat gives a process's group, thread
count and RSS. A group so costs two small reads per member (more for a
multi-threaded one; for its leader, preads of files kept open), whatever else runs
on the machine. A group member orphaned by the death of its parent (reparented to
the root, the tree's subreaper) is out of reach of the walk and no longer counted.

Which groups a supervisor reads, and what it reports up, is memory_guard.py's.
"""
from __future__ import annotations

import os
from typing import AbstractSet, Dict, List, Optional, Tuple

from orchestrator.engine import osproc

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class GroupReader:
    """RSS in bytes of process groups, read from /proc, keeping files open between checks.

    A group's members are its leader and the leader's descendants still in its group,
    found by walking /proc children files down from the leader (a descendant in another
    group, such as a setsid helper, is left out, and so is everything below it).

    Each leader's /proc/PID/stat and main-thread children file stay open from one check
    to the next (closed once it is no longer a leader, or gone): re-reading an open /proc
    file with pread costs a fraction of an open + read + close by path (7 + 2 us against
    13 + 11 on the bench VM). An open file stays bound to the process it was opened for:
    once that exits, its stat read fails (ESRCH) and the pid is opened afresh, so a reused
    pid is never read through a stale file. Descendants (helpers) are read by path.
    `keep_open=False` (too few fds to spare) reads every file by path.
    """

    def __init__(self) -> None:
        self.keep_open = True
        self._files: Dict[int, Tuple[int, int]] = {}  # leader -> (stat fd, children fd)

    def rss(self, groups: Dict[int, object], skip: AbstractSet[int] = frozenset(),
            keep: Optional[AbstractSet[int]] = None) -> Dict[object, int]:
        """RSS per owner, summed over the groups whose leader is in `groups`. A descendant that
        is itself a leader in `groups`, or in `skip`, is not read by the walk (it leads a group
        of its own, measured as a leader or elsewhere). Only the files of leaders in `keep`
        (all when None) stay open, which bounds the fds held."""
        for pid in [pid for pid in self._files if pid not in groups or (keep is not None and pid not in keep)]:
            self._forget(pid)
        totals: Dict[object, int] = {}
        for leader, owner in groups.items():
            kept = self.keep_open and (keep is None or leader in keep)
            totals[owner] = totals.get(owner, 0) + self._group_rss(leader, groups, skip, kept)
        return totals

    def close(self) -> None:
        for pid in list(self._files):
            self._forget(pid)

    def _group_rss(self, leader: int, leaders: Dict[int, object], skip: AbstractSet[int], kept: bool) -> int:
        stat = self._leader_stat(leader, kept)
        if stat is None or stat[0] != leader:
            return 0  # gone, or not (yet) leading a group
        _, threads, total = stat
        pending = [child for child in self._leader_children(leader, threads)
                   if child not in leaders and child not in skip]
        while pending:
            pid = pending.pop()
            stat = _stat(pid)
            if stat is None or stat[0] != leader:
                continue  # gone meanwhile, or not (or no longer) in the group
            _, threads, rss = stat
            total += rss
            pending.extend(child for child in osproc.children_of(pid, threads)
                           if child not in leaders and child not in skip)
        return total

    def _leader_stat(self, pid: int, kept: bool) -> Optional[Tuple[int, int, int]]:
        files = self._files.get(pid)
        if files is not None:
            try:
                return _parse_stat(os.pread(files[0], 4096, 0))
            except OSError:  # exited (ESRCH): the pid may be someone else's by now
                self._forget(pid)
        if kept:
            try:
                stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                children_fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                os.close(stat_fd)
                return _stat(pid)
            self._files[pid] = (stat_fd, children_fd)
            try:
                return _parse_stat(os.pread(stat_fd, 4096, 0))
            except OSError:
                self._forget(pid)
                return None
        return _stat(pid)

    def _leader_children(self, pid: int, threads: int) -> List[int]:
        files = self._files.get(pid)
        if threads != 1 or files is None:
            return osproc.children_of(pid, threads)
        data = b""
        try:
            while True:
                chunk = os.pread(files[1], 4096, len(data))
                data += chunk
                if len(chunk) < 4096:
                    break
        except OSError:
            pass
        return [int(field) for field in data.split()]

    def _forget(self, pid: int) -> None:
        for fd in self._files.pop(pid, ()):
            os.close(fd)


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
    return _parse_stat(_read(f"/proc/{pid}/stat"))


def _parse_stat(data: bytes) -> Optional[Tuple[int, int, int]]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 22:
        return None
    # fields[0] is field 3 (state): pgrp is field 5, num_threads 20, rss 24 (pages).
    return int(fields[2]), int(fields[17]), int(fields[21]) * PAGE_SIZE


def describe_bytes(count: int) -> str:
    for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return f"{count}B"
