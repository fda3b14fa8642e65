"""Starting children in spec order, depth first: a supervisor child's subtree is up before its next sibling starts."""
from __future__ import annotations

import collections
from typing import Callable, Deque, Iterable, Optional

from orchestrator.engine.slot import Slot


class StartSequence:
    """Starts slots one at a time (OTP order).

    A worker counts as started once forked (with `ready = "notify"`, once it sends
    READY=1); a supervisor child once it reports its subtree ready, or exits trying. `on_done` runs when the last one is.
    """

    def __init__(self, slots: Iterable[Slot], start: Callable[[Slot], None], on_done: Callable[[], None]) -> None:
        self._queue: Deque[Slot] = collections.deque(slots)
        self._start = start
        self._on_done = on_done
        self._waiting: Optional[Slot] = None
        self._finished = False

    def begin(self) -> None:
        self._advance()

    def ready(self, slot: Slot) -> None:
        if slot is self._waiting:
            self._waiting = None
            self._advance()

    exited = ready  # a supervisor child that died while starting no longer holds the line

    def cancel(self) -> None:
        self._finished = True
        self._queue.clear()

    def _advance(self) -> None:
        while self._waiting is None and self._queue and not self._finished:
            slot = self._queue.popleft()
            self._start(slot)
            if slot.waits_for_ready and slot.running is not None and not slot.ready:
                self._waiting = slot
        if self._waiting is None and not self._queue and not self._finished:
            self._finished = True
            self._on_done()
