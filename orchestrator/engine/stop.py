"""Stopping children one at a time: SIGTERM, wait for the node's budget, then SIGKILL."""
from __future__ import annotations

import collections
import signal
from typing import Callable, Deque, List, Optional, Sequence

from orchestrator.engine import osproc
from orchestrator.engine.loop import Loop, Timer
from orchestrator.engine.output import log
from orchestrator.engine.slot import Slot
from orchestrator.engine.spawn import Running, Starter
from orchestrator.engine.states import NodeState


# How long a supervisor told to kill its subtree may take before it is SIGKILLed.
KILL_SUBTREE_GRACE = 2.0


class StopSequence:
    """Stops `slots` in the given order, each waited for before the next (OTP order).

    Daemon nodes are killed without waiting: a worker's process group is
    SIGKILLed; a supervisor is told to SIGKILL its own subtree first, so no
    grandchild or helper is orphaned. `on_done` runs once every slot handed in
    has been reaped, never earlier: every process stays accounted for.
    Signals go through `starter` (spawn.Starter), so a unit test records them.
    """

    def __init__(self, loop: Loop, starter: Starter, slots: Sequence[Slot], on_done: Callable[[], None],
                 on_signal: Callable[[Slot], None] = lambda slot: None) -> None:
        self._loop = loop
        self._starter = starter
        self._on_signal = on_signal  # the supervisor reports the `stopping` state
        self._slots = list(slots)
        self._queue: Deque[Slot] = collections.deque(slots)
        self._on_done = on_done
        self._current: List[Slot] = []  # the slot (or replica group) being waited for
        self._timer: Optional[Timer] = None
        self._finished = False
        self._force = False

    def begin(self) -> None:
        self._advance()

    def exited(self, slot: Slot) -> None:
        """The supervisor reaped `slot`; move on once what we waited for is gone."""
        if self._finished:
            return
        if slot in self._current:
            self._current.remove(slot)
            if not self._current:
                self._cancel_timer()
                self._advance()
        else:
            self._maybe_done()

    def force(self) -> None:
        """A second stop request: SIGKILL everything left at once."""
        self._force = True
        self._cancel_timer()
        for slot in self._current:
            if slot.running is not None:
                self._kill_fast(slot)
        self._current = []
        self._advance()

    def cancel(self) -> None:
        self._cancel_timer()
        self._finished = True

    def _advance(self) -> None:
        while self._queue:
            slot = self._queue.popleft()
            if slot.running is None:
                continue
            if slot.spec.daemon or self._force:
                self._kill_fast(slot)
                self._on_signal(slot)
                continue
            self._current = [slot] + self._replicas_after(slot)
            for member in self._current:
                self._send(member, signal.SIGTERM)
                self._on_signal(member)
            self._timer = self._loop.call_later(slot.spec.stop_budget(), self._deadline)
            return
        self._maybe_done()

    def _replicas_after(self, slot: Slot) -> List[Slot]:
        """Instances of a replicated worker stop together, like OTP's simple_one_for_one
        children: they are interchangeable, so waiting on each in turn buys nothing."""
        if slot.spec.replicas is None:
            return []
        group = slot.spec.name.rpartition("#")[0]
        members = []
        while self._queue and self._queue[0].spec.replicas is not None \
                and self._queue[0].spec.name.rpartition("#")[0] == group:
            member = self._queue.popleft()
            if member.running is not None and not member.spec.daemon and not self._force:
                members.append(member)
            elif member.running is not None:
                self._queue.appendleft(member)
                break
        return members

    def _send(self, slot: Slot, signum: int, group: bool = True) -> None:
        """Signal a node's process group (its helpers too), or the pid before it has one."""
        assert slot.running is not None  # only a slot with a process is signalled
        slot.stop_requested = True
        slot.state = NodeState.STOPPING
        self._starter.signal(slot.running, signum, group)

    def _kill_fast(self, slot: Slot) -> None:
        if not slot.spec.is_supervisor:
            self._send(slot, signal.SIGKILL)
            return
        self._send(slot, osproc.KILL_SUBTREE, group=False)
        running = slot.running
        self._loop.call_later(KILL_SUBTREE_GRACE, lambda: self._kill_if_still(slot, running))

    def _kill_if_still(self, slot: Slot, running: Optional[Running]) -> None:
        if slot.running is running:
            log(f"{slot.spec.path} did not kill its subtree within {KILL_SUBTREE_GRACE:g}s; sending SIGKILL")
            self._send(slot, signal.SIGKILL)

    def _deadline(self) -> None:
        for slot in self._current:
            if slot.running is not None:
                log(f"{slot.spec.path} did not stop within {slot.spec.stop_budget():g}s; sending SIGKILL")
                self._send(slot, signal.SIGKILL)

    def _maybe_done(self) -> None:
        if self._finished or self._current or self._queue:
            return
        if any(slot.running is not None for slot in self._slots):
            return
        self._finished = True
        self._on_done()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
