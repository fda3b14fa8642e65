"""How fast one supervisor restarts: its intensity window and each child's crash-loop backoff.

Both are measured on the supervisor's clock (injected, so a unit test turns it
by hand). The decisions themselves are policy's (intensity.py); this keeps the
bookkeeping they need and says why the supervisor gives up.
"""
from __future__ import annotations

import signal
from typing import Callable

from orchestrator.engine.slot import Slot
from orchestrator.policy.intensity import RestartWindow, backoff_delay
from orchestrator.spec.model import Intensity


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class RestartPacing:
    """The restarts one supervisor allows (OTP intensity) and the delay before each."""

    def __init__(self, intensity: Intensity, clock: Callable[[], float]) -> None:
        self._window = RestartWindow(intensity)
        self._clock = clock

    @property
    def intensity(self) -> Intensity:
        return self._window.intensity

    @intensity.setter
    def intensity(self, intensity: Intensity) -> None:
        """A reload's new limit applies to the restarts already counted, too."""
        self._window.intensity = intensity

    def started(self, slot: Slot) -> None:
        slot.started = self._clock()

    def exited(self, slot: Slot) -> None:
        slot.last_uptime = self._clock() - slot.started

    def admit(self) -> bool:
        """Count a restart now; False when it is one more than the intensity allows."""
        return self._window.allow(self._clock())

    def delay(self, slot: Slot) -> float:
        """Seconds to wait before restarting `slot`: 0 unless it keeps exiting soon after
        starting (a child that lived for the backoff cap starts afresh)."""
        backoff = slot.spec.backoff
        if slot.last_uptime >= backoff.cap:
            slot.quick_exits = 0
        delay = backoff_delay(slot.quick_exits, backoff)
        slot.quick_exits += 1
        return delay

    def budget(self) -> str:
        """Where this round stands, for the log."""
        limit = self.intensity
        return f"restart {self._window.recent()} of at most {limit.max_restarts} within {limit.within:g}s"

    def exceeded(self, slot: Slot, code: int) -> str:
        """Why we give up when `slot`'s exit is one restart too many."""
        limit = self.intensity
        reason = (f"{slot.spec.path} {describe_exit(code)}; more than {limit.max_restarts} "
                  f"restarts within {limit.within:g}s")
        if slot.report:
            reason += f" (because: {slot.report})"
        return reason
