"""A supervisor's node processes in its loop: started, their fds watched, reaped on exit.

The loop tells us when a process has exited (its exit fd), when a worker wrote
output (relayed, prefixed with its path) and when a supervisor child sent a
message; the supervisor decides what any of it means.
"""
from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Callable

from orchestrator.engine.loop import Loop
from orchestrator.engine.messages import UpMessage
from orchestrator.engine.output import OutputRelay
from orchestrator.engine.slot import Slot
from orchestrator.engine.spawn import Running, Starter
from orchestrator.spec.model import TreeContext


class ProcessWatch:
    """Starts slots' processes through `starter` and reports their exits and messages."""

    def __init__(self, loop: Loop, starter: Starter, on_exit: Callable[[Slot], None],
                 on_message: Callable[[Slot, UpMessage], None]) -> None:
        self._loop = loop
        self._starter = starter
        self._on_exit = on_exit
        self._on_message = on_message

    def start(self, slot: Slot, tree: TreeContext) -> Running:
        """Start a process for `slot` and watch it. Raises OSError if it cannot be forked."""
        running = self._starter.start(slot.spec, tree)
        self._loop.add_reader(running.exit_fd, lambda: self._on_exit(slot))
        if running.output_fd is not None:
            relay = OutputRelay(running.output_fd, slot.spec.path, self._close_relay)
            self._loop.add_reader(running.output_fd, relay.on_readable)
        if running.uplink is not None:
            uplink = running.uplink
            self._loop.add_reader(uplink.fileno(), lambda: self._on_readable(slot, uplink))
        return running

    def reap(self, slot: Slot) -> int:
        """Stop watching `slot`'s exited process and collect its exit code.

        Messages it sent before it exited are handled first. Helpers a worker
        forked share its process group and are killed: none outlives it.
        """
        running = slot.running
        assert running is not None  # its exit fd fired: it was started
        if running.uplink is not None:
            self._drain(slot, running.uplink)
            self._loop.remove_reader(running.uplink.fileno())
        self._loop.remove_reader(running.exit_fd)
        code = self._starter.reap(running)
        if not slot.spec.is_supervisor:
            self._starter.kill_group(running)
        return code

    def _on_readable(self, slot: Slot, conn: Connection) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())
            return
        self._on_message(slot, message)

    def _drain(self, slot: Slot, conn: Connection) -> None:
        try:
            while conn.poll(0):
                self._on_message(slot, conn.recv())
        except (EOFError, OSError):
            pass

    def _close_relay(self, relay: OutputRelay) -> None:
        self._loop.remove_reader(relay.fd)
        os.close(relay.fd)
