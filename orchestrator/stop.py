"""Stopping children one at a time: SIGTERM, wait for the node's budget, then SIGKILL."""
from __future__ import annotations

import os
import signal
from typing import Callable, List, Optional, Sequence

from orchestrator import osproc
from orchestrator.loop import Loop, Timer
from orchestrator.output import log


# How long a supervisor told to kill its subtree may take before it is SIGKILLed.
KILL_SUBTREE_GRACE = 2.0


def signal_node(slot, signum: int, group: bool = True) -> None:
    """Signal a node's process group (its helpers too), or the pid before it has one."""
    slot.stop_requested = True
    slot.state = "stopping"
    pid = slot.running.pid
    if not group:
        osproc.send(pid, signum)
        return
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        # The child has not reached setpgid yet; its signals are still blocked,
        # so this one waits for it and takes the default action once unblocked.
        osproc.send(pid, signum)
    except PermissionError:
        pass


class StopSequence:
    """Stops `slots` in the given order, each waited for before the next (OTP order).

    Daemon nodes are killed without waiting: a worker's process group is
    SIGKILLed; a supervisor is told to SIGKILL its own subtree first, so no
    grandchild or helper is orphaned. `on_done` runs once every slot handed in
    has been reaped, never earlier: every process stays accounted for.
    """

    def __init__(self, loop: Loop, slots: Sequence, on_done: Callable[[], None],
                 on_signal: Callable[[object], None] = lambda slot: None) -> None:
        self._loop = loop
        self._on_signal = on_signal  # the supervisor reports the `stopping` state
        self._slots = list(slots)
        self._queue: List = list(slots)
        self._on_done = on_done
        self._current = None
        self._timer: Optional[Timer] = None
        self._finished = False
        self._force = False

    def begin(self) -> None:
        self._advance()

    def exited(self, slot) -> None:
        """The supervisor reaped `slot`; move on if it was the one we waited for."""
        if self._finished:
            return
        if slot is self._current:
            self._cancel_timer()
            self._current = None
            self._advance()
        else:
            self._maybe_done()

    def force(self) -> None:
        """A second stop request: SIGKILL everything left at once."""
        self._force = True
        self._cancel_timer()
        if self._current is not None and self._current.running is not None:
            self._kill_fast(self._current)
        self._current = None
        self._advance()

    def cancel(self) -> None:
        self._cancel_timer()
        self._finished = True

    def _advance(self) -> None:
        while self._queue:
            slot = self._queue.pop(0)
            if slot.running is None:
                continue
            if slot.spec.daemon or self._force:
                self._kill_fast(slot)
                self._on_signal(slot)
                continue
            signal_node(slot, signal.SIGTERM)
            self._on_signal(slot)
            self._current = slot
            self._timer = self._loop.call_later(slot.spec.stop_budget(), self._deadline)
            return
        self._maybe_done()

    def _kill_fast(self, slot) -> None:
        if not slot.spec.is_supervisor:
            signal_node(slot, signal.SIGKILL)
            return
        signal_node(slot, osproc.KILL_SUBTREE, group=False)
        running = slot.running
        self._loop.call_later(KILL_SUBTREE_GRACE, lambda: self._kill_if_still(slot, running))

    def _kill_if_still(self, slot, running) -> None:
        if slot.running is running:
            log(f"{slot.spec.path} did not kill its subtree within {KILL_SUBTREE_GRACE:g}s; sending SIGKILL")
            signal_node(slot, signal.SIGKILL)

    def _deadline(self) -> None:
        slot = self._current
        if slot is None or slot.running is None:
            return
        log(f"{slot.spec.path} did not stop within {slot.spec.stop_budget():g}s; sending SIGKILL")
        signal_node(slot, signal.SIGKILL)

    def _maybe_done(self) -> None:
        if self._finished or self._current is not None or self._queue:
            return
        if any(slot.running is not None for slot in self._slots):
            return
        self._finished = True
        self._on_done()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
