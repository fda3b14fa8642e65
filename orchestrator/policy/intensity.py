"""Pure restart pacing: the intensity window (OTP intensity/period) and crash-loop backoff."""
from __future__ import annotations

import collections
from typing import Deque

from orchestrator.spec.model import Backoff, Intensity


class RestartWindow:
    """Allows at most `max_restarts` restarts within any `within` seconds.

    Times come from the caller (monotonic seconds) so tests drive it with a fake clock.
    """

    def __init__(self, intensity: Intensity) -> None:
        self.intensity = intensity
        self._times: Deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        """Record a restart at `now`; False when it exceeds the intensity (give up)."""
        horizon = now - self.intensity.within
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.intensity.max_restarts

    def recent(self) -> int:
        return len(self._times)


def backoff_delay(quick_exits: int, backoff: Backoff) -> float:
    """Seconds to wait before a restart, given how many quick exits came just before it.

    0 for the first (a lone crash restarts at once); then initial, 2x, 4x... capped.
    """
    if quick_exits <= 0:
        return 0.0
    return min(backoff.initial * 2 ** (quick_exits - 1), backoff.cap)
