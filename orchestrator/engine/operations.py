"""One operation at a time for a supervisor: stop some children, then start some.

An operation is a stop sequence followed by a start sequence (a restart round,
a command, a reload), a backed-off wait before a round, or the final stop. The
supervisor decides what each one does; this module makes sure they never
overlap, queues commands behind the current one, and says when it is idle.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Union

from orchestrator.engine.loop import Loop, Timer
from orchestrator.engine.slot import Slot
from orchestrator.engine.spawn import Starter
from orchestrator.engine.start import StartSequence
from orchestrator.engine.stop import StopSequence

Action = Callable[[], None]


def _nothing() -> None:
    pass


class Operations:
    """Runs a supervisor's operations one after another.

    `start_slot` starts one slot's process; `on_signal` reports a slot signalled
    to stop; `on_idle` runs each time a start sequence ends, before a queued
    command may begin (the supervisor judges the failures it saw meanwhile).
    """

    def __init__(self, loop: Loop, starter: Starter, start_slot: Callable[[Slot], None],
                 on_signal: Callable[[Slot], None], on_idle: Action) -> None:
        self._loop = loop
        self._starter = starter
        self._start_slot = start_slot
        self._on_signal = on_signal
        self._on_idle = on_idle
        self._stopping: Optional[StopSequence] = None
        self._starting: Optional[StartSequence] = None
        self._waiting: Optional[Timer] = None  # a backed-off round, not yet begun
        self._queued: List[Action] = []  # commands and reloads waiting for idle
        self._closed = False  # the final stop has begun: nothing else runs

    @property
    def busy(self) -> bool:
        return self._stopping is not None or self._starting is not None or self._waiting is not None

    @property
    def current(self) -> Optional[Union[StopSequence, StartSequence]]:
        """The sequence running now, to be told of an exit (noted before the exit is handled:
        handling it may begin a new sequence, which must not hear of it)."""
        return self._stopping if self._stopping is not None else self._starting

    def start(self, slots: List[Slot], then: Action = _nothing) -> None:
        """Start `slots` in order; `then` runs when the last one is up, before idle."""
        def done() -> None:
            then()  # before idle, which may begin a queued reload
            self._starting = None
            self._on_idle()
            if self._queued and not self.busy and not self._closed:
                self._queued.pop(0)()
        self._starting = StartSequence(slots, self._start_slot, done)
        self._starting.begin()

    def stop_then_start(self, stop: List[Slot], start: Callable[[], List[Slot]],
                        then: Action = _nothing) -> None:
        """Stop `stop` in the order given, then start what `start()` returns then."""
        def stopped() -> None:
            self._stopping = None
            self.start(start(), then)
        self._run_stop(stop, stopped)

    def after(self, delay: float, action: Action) -> None:
        """Wait `delay` seconds, busy all along, then run `action` (which begins a round)."""
        def fire() -> None:
            self._waiting = None
            action()
        self._waiting = self._loop.call_later(delay, fire)

    def when_idle(self, action: Action) -> None:
        """Run `action` now, or after the operations before it; never once closed."""
        if self._closed:
            return
        if self.busy:
            self._queued.append(action)
        else:
            action()

    def started(self, slot: Slot) -> bool:
        """A supervisor child reported its subtree up; False if no start sequence runs."""
        if self._starting is None:
            return False
        self._starting.ready(slot)
        return True

    def close(self, slots: List[Slot], on_done: Action) -> None:
        """The final stop: cancel everything else, stop `slots` in the order given."""
        self._closed = True
        self._queued.clear()
        for operation in (self._starting, self._waiting, self._stopping):
            if operation is not None:
                operation.cancel()
        self._starting = self._waiting = None

        def stopped() -> None:
            self._stopping = None
            on_done()
        self._run_stop(slots, stopped)

    def force(self) -> None:
        """SIGKILL what the running stop sequence has left (a second stop request)."""
        if self._stopping is not None:
            self._stopping.force()

    def _run_stop(self, slots: List[Slot], on_done: Action) -> None:
        self._stopping = StopSequence(self._loop, self._starter, slots, on_done, self._on_signal)
        self._stopping.begin()
