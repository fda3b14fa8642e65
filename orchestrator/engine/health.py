"""Readiness and heartbeat of a supervisor's workers: its sd_notify socket and one deadline timer per node.

It owns the socket (notify.py), tells which worker a datagram speaks for, and
keeps each worker's ready_timeout or watchdog deadline. It only reports, through
the supervisor's callbacks: a worker became ready, its status changed, it missed
its deadline. The supervisor decides what follows (signals, restarts).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

from orchestrator.engine import notify
from orchestrator.engine.loop import Loop
from orchestrator.engine.output import log
from orchestrator.engine.slot import Slot
from orchestrator.engine.states import NodeState
from orchestrator.spec.model import ReadyMode

SlotCallback = Callable[[Slot], None]


class Health:
    """sd_notify READY/WATCHDOG/STATUS/EXTEND_TIMEOUT_USEC for the workers among `slots()`."""

    def __init__(self, loop: Loop, clock: Callable[[], float], slots: Callable[[], List[Slot]],
                 stopping: Callable[[], bool], on_ready: SlotCallback, on_status: SlotCallback,
                 on_missed: Callable[[Slot, str], None]) -> None:
        self._loop = loop
        self._clock = clock
        self._slots = slots  # a callable: a reload replaces the supervisor's list
        self._stopping = stopping
        self._on_ready = on_ready
        self._on_status = on_status
        self._on_missed = on_missed
        self._socket: Optional[notify.NotifySocket] = None
        self.ignored = 0  # sd_notify datagrams from a pid that is none of our workers'

    def open(self, label: str) -> None:
        try:
            self._socket = notify.NotifySocket(self._loop, self.on_notify, os.environ.get(notify.DIR_ENV))
        except OSError as error:
            log(f"{label}: no sd_notify socket ({error}); `ready = \"notify\"` workers cannot become ready")
            os.environ.pop(notify.ADDRESS_ENV, None)  # not our parent's: its messages would be ignored
            return
        # Our worker processes inherit it (fork or spawn); worker_main makes it NOTIFY_SOCKET.
        os.environ[notify.ADDRESS_ENV] = self._socket.address

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def started(self, slot: Slot) -> None:
        """`slot` has a new process: give a worker its ready_timeout, or its first watchdog period."""
        if not slot.spec.is_supervisor:
            if slot.spec.ready is ReadyMode.NOTIFY:
                self._arm(slot, "ready_timeout", slot.spec.ready_timeout)
            elif slot.spec.watchdog > 0:
                self._arm(slot, "watchdog", slot.spec.watchdog)

    def exited(self, slot: Slot) -> None:
        self._disarm(slot)

    def _sender(self, pid: int) -> Optional[Slot]:
        """The worker slot `pid` speaks for: the worker itself or a process in its group."""
        workers = [slot for slot in self._slots() if slot.running is not None and not slot.spec.is_supervisor]
        for slot in workers:
            if slot.running is not None and slot.running.pid == pid:
                return slot
        try:
            group = os.getpgid(pid)
        except OSError:
            return None  # gone already: we cannot tell whose it was
        for slot in workers:
            if slot.running is not None and slot.running.pid == group:
                return slot
        return None

    def on_notify(self, pid: int, fields: Dict[str, str]) -> None:
        """One datagram from `pid`: the socket's handler (a unit test calls it directly)."""
        slot = self._sender(pid)
        if slot is None or slot.running is None:
            self.ignored += 1
            return
        changed = False
        if "STATUS" in fields:
            slot.status = fields["STATUS"][:200] or None
            changed = True
        if fields.get("READY") == "1" and slot.spec.ready is ReadyMode.NOTIFY and not slot.ready \
                and slot.state is NodeState.STARTING:
            self._disarm(slot)
            if slot.spec.watchdog > 0:
                self._arm(slot, "watchdog", slot.spec.watchdog)
            self._on_ready(slot)  # it emits the slot, status included
            changed = False
        if fields.get("WATCHDOG") == "1" and slot.deadline_reason == "watchdog":
            slot.deadline = self._clock() + slot.spec.watchdog
        extend = fields.get("EXTEND_TIMEOUT_USEC", "")
        if extend.isdigit() and slot.deadline_reason == "ready_timeout":
            slot.deadline = max(slot.deadline, self._clock() + int(extend) / 1_000_000)
        if changed:
            self._on_status(slot)

    def _arm(self, slot: Slot, reason: str, seconds: float) -> None:
        """One timer per node; heartbeats only move `slot.deadline`, the timer re-arms itself."""
        self._disarm(slot)
        slot.deadline_reason = reason
        slot.deadline = self._clock() + seconds
        running = slot.running
        slot.deadline_timer = self._loop.call_later(seconds, lambda: self._on_deadline(slot, running))

    @staticmethod
    def _disarm(slot: Slot) -> None:
        if slot.deadline_timer is not None:
            slot.deadline_timer.cancel()
        slot.deadline_timer = None
        slot.deadline_reason = ""
        slot.deadline = 0.0

    def _on_deadline(self, slot: Slot, running: object) -> None:
        if slot.running is not running or slot.running is None or not slot.deadline_reason:
            return
        if slot.stop_requested or self._stopping():
            return  # already on its way out, on orch's own stop budget
        left = slot.deadline - self._clock()
        if left > 0:
            slot.deadline_timer = self._loop.call_later(left, lambda: self._on_deadline(slot, running))
            return
        reason = slot.deadline_reason
        limit = slot.spec.ready_timeout if reason == "ready_timeout" else slot.spec.watchdog
        self._disarm(slot)
        self._on_missed(slot, f"{reason} missed (no {'READY=1' if reason == 'ready_timeout' else 'WATCHDOG=1'} "
                              f"within {limit:g}s)")
