"""The event loop each supervisor process runs: fds, timers and signals in one select."""
from __future__ import annotations

import heapq
import itertools
import selectors
import signal
import socket
import time
from types import FrameType
from typing import Callable, Dict, List, Optional, Tuple

Callback = Callable[[], None]


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _ignore(signum: int, frame: Optional[FrameType]) -> None:
    """Signal handler: the C-level handler already wrote the signal to the wakeup fd."""


class Loop:
    """Waits on readable fds, the next timer deadline and signals together; no polling."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: List[Tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._signal_callbacks: Dict[int, Callback] = {}
        self._turn_end: List[Callback] = []
        self._running = False
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.add_reader(self._wake_r.fileno(), self._on_wakeup)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._watch(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._watch(fd, 0, None)

    def set_writer(self, fd: int, callback: Optional[Callback]) -> None:
        """Call `callback` while `fd` is writable; None stops watching for writability."""
        self._watch(fd, 1, callback)

    def _watch(self, fd: int, slot: int, callback: Optional[Callback]) -> None:
        try:
            callbacks = list(self._selector.get_key(fd).data)
        except (KeyError, ValueError):
            callbacks = [None, None]
        callbacks[slot] = callback
        events = (selectors.EVENT_READ if callbacks[0] else 0) | (selectors.EVENT_WRITE if callbacks[1] else 0)
        try:
            if not events:
                self._selector.unregister(fd)
            elif fd in self._selector.get_map():
                self._selector.modify(fd, events, callbacks)
            else:
                self._selector.register(fd, events, callbacks)
        except (KeyError, ValueError, OSError):
            pass

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def at_turn_end(self, callback: Callback) -> None:
        """Run `callback` once, after this turn's ready fds and due timers, before the loop
        waits again or returns: for work that must not delay what they start. A restart forks the
        replacement first; the records of the exit are written after it."""
        self._turn_end.append(callback)

    def on_signal(self, signum: int, callback: Callback) -> None:
        """Run `callback` in the loop (never in handler context) when `signum` arrives."""
        if not self._signal_callbacks:
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signal_callbacks[signum] = callback
        signal.signal(signum, _ignore)

    def run(self) -> None:
        self._running = True
        while self._running:
            self._end_turn()  # also what was queued before run() or outside the loop
            if not self._running:
                break
            for key, events in self._selector.select(self._timeout()):
                # An earlier callback of this batch may have closed this fd and
                # registered a new one under the same number: skip stale events.
                for mask, slot in ((selectors.EVENT_READ, 0), (selectors.EVENT_WRITE, 1)):
                    callback = key.data[slot]
                    if events & mask and callback is not None and self._current(key.fd, slot) is callback:
                        callback()
                if not self._running:
                    break
            self._run_due_timers()
        self._end_turn()

    def _end_turn(self) -> None:
        while self._turn_end:
            callbacks, self._turn_end = self._turn_end, []
            for callback in callbacks:
                callback()

    def _current(self, fd: int, slot: int) -> Optional[Callback]:
        try:
            return self._selector.get_key(fd).data[slot]
        except (KeyError, ValueError):
            return None

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        if self._signal_callbacks:
            signal.set_wakeup_fd(-1)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _timeout(self) -> Optional[float]:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._running and self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def _on_wakeup(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            callback = self._signal_callbacks.get(signum)
            if callback is not None:
                callback()
