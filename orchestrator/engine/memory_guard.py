"""`max_memory` for one supervisor: which children to measure, and which one went over.

memory.py measures; this keeps what the measuring needs (the pids of the nodes
below each supervisor child, from their events) and what came of it (the processes
asked to stop for their memory). It only reports: the supervisor stops the process
and judges its exit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List

from orchestrator.engine import memory
from orchestrator.engine.loop import Loop
from orchestrator.engine.messages import NodeEvent
from orchestrator.engine.slot import Slot

if TYPE_CHECKING:  # a type only: the guard never starts a process
    from orchestrator.engine.spawn import Running


class MemoryGuard:
    """One timer for every limited child of a supervisor; `on_over(slot, why)` for each one over."""

    def __init__(self, loop: Loop, slots: Callable[[], List[Slot]],
                 on_over: Callable[[Slot, str], None]) -> None:
        self._slots = slots  # a callable: a reload replaces the supervisor's list
        self._on_over = on_over
        self._watch = memory.MemoryWatch(loop, self._targets, self._over)
        self._stopped: List[Running] = []  # processes reported over their limit, not yet reaped
        self._descendants: Dict[str, int] = {}  # pids of the nodes below our children, from their events
        self._off = False  # the supervisor stops: nothing is measured any more

    def configure(self, interval: float) -> None:
        """(Re)arm the timer after a start or a reload; none while no child is limited."""
        limited = any(slot.spec.max_memory is not None for slot in self._slots())
        self._watch.configure(interval, limited and not self._off)

    def stop(self) -> None:
        self._off = True
        self._watch.stop()

    def reaped(self, running: Running) -> bool:
        """`running` exited: whether it had been reported over its limit (then its exit is a failure)."""
        if any(stopped is running for stopped in self._stopped):
            self._stopped = [stopped for stopped in self._stopped if stopped is not running]
            return True
        return False

    def note(self, slot: Slot, event: NodeEvent) -> None:
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

    def _targets(self) -> List[memory.Target]:
        targets: List[memory.Target] = []
        for slot in self._slots():
            running, limit = slot.running, slot.spec.max_memory
            if running is None or limit is None or slot.stop_requested \
                    or any(stopped is running for stopped in self._stopped):
                continue
            leaders = [running.pid]
            if slot.spec.is_supervisor:
                prefix = slot.spec.path + "/"
                leaders += [pid for path, pid in self._descendants.items() if path.startswith(prefix)]
            targets.append((slot, leaders, limit))
        return targets

    def _over(self, key: object, rss: int, limit: int) -> None:
        slot = key if isinstance(key, Slot) else None
        if slot is None or slot.running is None or self._off:
            return
        self._stopped.append(slot.running)
        self._on_over(slot, f"memory_limit exceeded: RSS {memory.describe_bytes(rss)} ({rss} bytes) > "
                            f"max_memory {memory.describe_bytes(limit)} ({limit} bytes)")
