"""A cheap, pollable view of one process tree read straight from /proc: each poll lists /proc
and reads only the pids it has not seen, plus the few descendants not yet known to be leaves."""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, Optional, Set, Tuple

Stat = Tuple[int, str, str]  # ppid, state letter, comm


def read_stat(pid: int) -> Optional[Stat]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    right = data.rindex(b")")
    comm = data[data.index(b"(") + 1:right].decode(errors="replace")
    state, ppid = data[right + 2:].split(maxsplit=2)[:2]
    return int(ppid), state.decode(), comm


def read_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie (a zombie is dead, only waiting to be reaped)."""
    stat = read_stat(pid)
    return stat is not None and stat[1] != "Z"


def all_pids() -> Set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


# is_leaf(table, pid) -> bool: does this descendant count as a leaf worker of the contender?
LeafTest = Callable[["ProcTable", int], bool]


class ProcTable:
    """The descendants of `root` and which of them are leaves; `scan()` refreshes it.

    A scan lists /proc and reads only pids it has not seen, plus the few descendants
    not yet known to be leaves (a fork becomes a leaf when it execs or renames itself).
    """

    def __init__(self, root: int, is_leaf: LeafTest) -> None:
        self.root = root
        self.is_leaf = is_leaf
        self.stat: Dict[int, Stat] = {}
        self.below: Set[int] = set()
        self.leaves: Set[int] = set()

    def scan(self) -> "ProcTable":
        pids = all_pids()
        for pid in self.stat.keys() - pids:
            del self.stat[pid]
            self.below.discard(pid)
            self.leaves.discard(pid)
        self._add(sorted(pids - self.stat.keys()))
        for pid in self.below - self.leaves:
            stat = read_stat(pid)
            if stat is not None:
                self.stat[pid] = stat
                if stat[1] != "Z" and self.is_leaf(self, pid):
                    self.leaves.add(pid)
        return self

    def _add(self, new: Iterable[int]) -> None:
        pending = []
        for pid in new:
            stat = read_stat(pid)
            if stat is not None:
                self.stat[pid] = stat
                pending.append(pid)
        grew = True
        while grew:  # parents first, whatever order pids were handed out in
            grew = False
            for pid in pending:
                parent = self.stat[pid][0]
                if pid not in self.below and (parent == self.root or parent in self.below):
                    self.below.add(pid)
                    grew = True

    def ppid(self, pid: int) -> int:
        return self.stat[pid][0]

    def comm(self, pid: int) -> str:
        return self.stat[pid][2]

    def managers(self) -> Set[int]:
        """The root and every descendant that is not a leaf (supervisors, helpers)."""
        return ({self.root} | self.below) - self.leaves
