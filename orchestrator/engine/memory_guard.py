"""`max_memory` for one supervisor: what it measures, what it reports up, which child went over.

Each process group is read once per check, by the supervisor that owns it:

- A supervisor reads the groups of its workers (memory.py), those with a limit, or
  all of them when it reports up.
- It *reports up* when its own node has `max_memory`: every `memory_check` seconds it
  sends its parent a `MemoryReport` of its subtree's RSS (its own process group, its
  workers' groups, and the latest figures of its supervisor children), and the
  parent judges it on receipt. The parent consumes the report: it goes one hop.
- A supervisor child's figure is the latest report from its current process, while
  fresh. A child that reports nothing for STALE_INTERVALS of its own interval (busy,
  stuck) is not judged on its old figure: its subtree is measured here by walking
  the groups of every node below it (their pids come from their events), as is the
  subtree of a child that never reports (no `max_memory` of its own) when we report
  up. A child whose process we have not seen report yet counts 0 for that long:
  it is starting.

So with limits on every node each process is read once per interval; a subtree is
walked from above only below a limited supervisor whose supervisor child has no limit
(`NodeSpec` tells a child nothing about its ancestors' limits).

It only reports: the supervisor stops the process and judges its exit.
"""
from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import attrs

from orchestrator.engine import memory
from orchestrator.engine import osproc
from orchestrator.engine.loop import Loop, Timer
from orchestrator.engine.messages import MemoryReport, NodeEvent, UpMessage
from orchestrator.engine.slot import Slot
from orchestrator.spec.model import NodeSpec

if TYPE_CHECKING:  # a type only: the guard never starts a process
    from orchestrator.engine.spawn import Running

# A supervisor child's report counts for this many of its intervals (its `memory_check`),
# plus STALE_SLACK seconds for loop delays; then it is measured from here.
STALE_INTERVALS = 2
STALE_SLACK = 1.0

_OWN = "own process group"  # the key of our own group among the measured ones


@attrs.define(eq=False)
class _Figure:
    """The latest report of a supervisor child's process (None: none yet, since `at`)."""

    running: Running
    rss: Optional[int]
    at: float


class MemoryGuard:
    """One timer per supervisor; `on_over(slot, why)` for each child over its limit,
    `send(MemoryReport)` upward each check when our own node has a limit."""

    def __init__(self, loop: Loop, clock: Callable[[], float], slots: Callable[[], List[Slot]],
                 on_over: Callable[[Slot, str], None], send: Callable[[UpMessage], None]) -> None:
        self._loop = loop
        self._clock = clock
        self._slots = slots  # a callable: a reload replaces the supervisor's list
        self._on_over = on_over
        self._send = send
        self._timer: Optional[Timer] = None
        self._interval = 0.0
        self._path = ""
        self._reporting = False  # our node has max_memory: our parent judges our reports
        self._stopped: List[Running] = []  # processes reported over their limit, not yet reaped
        self._reader = memory.GroupReader()  # keeps the measured groups' /proc files open
        self._figures: Dict[Slot, _Figure] = {}  # supervisor children's latest reports
        self._descendants: Dict[str, int] = {}  # pids of the nodes below our children, from their events
        self._off = False  # the supervisor stops: nothing is measured any more

    def configure(self, node: NodeSpec) -> None:
        """(Re)arm the timer after a start or a reload; none while nothing is limited."""
        self._path = node.path
        self._reporting = node.max_memory is not None and node.path != ""  # the root has no parent
        wanted = self._reporting or any(slot.spec.max_memory is not None for slot in self._slots())
        if not wanted or self._off:
            self._cancel()
            return
        # The supervisor's 2 fds per child, and 2 more for each group we keep open.
        needed = 4 * len(self._slots()) + 256
        osproc.ensure_fd_limit(needed)
        self._reader.keep_open = resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed
        if not self._reader.keep_open:
            self._reader.close()
        if self._timer is not None and node.memory_check == self._interval:
            return
        self._cancel()
        self._interval = node.memory_check
        self._timer = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        self._off = True
        self._cancel()

    def _cancel(self) -> None:
        self._reader.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reaped(self, running: Running) -> bool:
        """`running` exited: whether it had been reported over its limit (then its exit is a failure)."""
        if any(stopped is running for stopped in self._stopped):
            self._stopped = [stopped for stopped in self._stopped if stopped is not running]
            return True
        return False

    def received(self, slot: Slot, message: UpMessage) -> bool:
        """Whether `message` (from supervisor child `slot`) is ours to consume: a `MemoryReport`,
        judged now against the child's limit; or remember the pid a `NodeEvent` carries."""
        if isinstance(message, NodeEvent):
            self._note(slot, message)
            return False
        if not isinstance(message, MemoryReport):
            return False
        running = slot.running
        if running is not None and message.path == slot.spec.path:
            self._figures[slot] = _Figure(running, message.rss, self._clock())
            self._judge(slot, message.rss)
        return True

    def _note(self, slot: Slot, event: NodeEvent) -> None:
        """Remember the pid of each node below `slot` (a supervisor child): its subtree's groups."""
        if event.path == slot.spec.path:
            if event.pid is None:  # the subtree is gone
                prefix = slot.spec.path + "/"
                self._descendants = {path: pid for path, pid in self._descendants.items()
                                     if not path.startswith(prefix)}
        elif event.pid is None:
            self._descendants.pop(event.path, None)
        else:
            self._descendants[event.path] = event.pid

    def _tick(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._tick)
        now = self._clock()
        slots = self._slots()
        current = set(slots)
        self._figures = {slot: figure for slot, figure in self._figures.items()
                         if slot.running is figure.running and slot in current}
        groups: Dict[int, object] = {}  # group leader -> whose figure it adds to
        reported = 0
        for slot in slots:
            running = slot.running
            if running is None:
                continue
            wanted = self._reporting or slot.spec.max_memory is not None
            if slot.spec.is_supervisor:
                figure = self._figure(slot, running, now)
                if figure is not None:
                    reported += figure
                    continue
                if wanted:  # measured here: a walk of every group of its subtree
                    prefix = slot.spec.path + "/"
                    groups.update((pid, slot) for path, pid in self._descendants.items()
                                  if path.startswith(prefix))
            if wanted:
                groups[running.pid] = slot
        if not groups and not self._reporting:
            return
        if self._reporting:
            groups[os.getpid()] = _OWN
        # Our children lead groups of their own: not read by the walk of ours. Their files (and
        # ours) stay open between checks; those of the nodes below them are read by path.
        ours = {slot.running.pid for slot in slots if slot.running is not None}
        totals = self._reader.rss(groups, ours, ours | {os.getpid()})
        for key, rss in totals.items():
            if isinstance(key, Slot):
                self._judge(key, rss)
        if self._reporting and not self._off:
            self._send(MemoryReport(self._path, sum(totals.values()) + reported))

    def _figure(self, slot: Slot, running: Running, now: float) -> Optional[int]:
        """A reporting child's latest figure (0 before its first), or None if it is stale or
        the child does not report (no `max_memory`): then its subtree is measured here."""
        if slot.spec.max_memory is None:
            return None
        figure = self._figures.get(slot)
        if figure is None:  # first seen: its first report is due within its interval
            figure = self._figures[slot] = _Figure(running, None, now)
        if now - figure.at > STALE_INTERVALS * slot.spec.memory_check + STALE_SLACK:
            return None
        return figure.rss or 0

    def _judge(self, slot: Slot, rss: int) -> None:
        running, limit = slot.running, slot.spec.max_memory
        if running is None or limit is None or rss <= limit or self._off or slot.stop_requested \
                or any(stopped is running for stopped in self._stopped):
            return
        self._stopped.append(running)
        self._on_over(slot, f"memory_limit exceeded: RSS {memory.describe_bytes(rss)} ({rss} bytes) > "
                            f"max_memory {memory.describe_bytes(limit)} ({limit} bytes)")
