"""How a supervisor reports to whoever is above it: its parent supervisor, or the root's table.

What travels either way is in messages.py: up, a supervisor's own reports and
those it forwards from below, unchanged; down, commands for a node in its subtree.
"""
from __future__ import annotations

from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, List, Protocol

from orchestrator.engine.loop import Loop
from orchestrator.engine.messages import UpMessage

if TYPE_CHECKING:  # a type only: supervisor.py imports this module
    from orchestrator.engine.supervisor import Supervisor


class Uplink(Protocol):
    def attach(self, supervisor: Supervisor) -> None:
        """Start taking commands from above for `supervisor`."""

    def send(self, message: UpMessage) -> None:
        """Report `message` up: the supervisor's own, or one forwarded from below."""


class PipeUplink:
    """A supervisor below the root: sends to its parent over a multiprocessing pipe, in
    order, at the end of the loop's turn (a restart forks its replacement before it reports)."""

    def __init__(self, conn: Connection, loop: Loop) -> None:
        self._conn = conn
        self._loop = loop
        self._pending: List[UpMessage] = []

    def attach(self, supervisor: Supervisor) -> None:
        self._loop.add_reader(self._conn.fileno(), lambda: self._on_readable(supervisor))

    def _on_readable(self, supervisor: Supervisor) -> None:
        try:
            command = self._conn.recv()
        except (EOFError, OSError):
            # The parent is gone (the parent-death signal usually beats this).
            self._loop.remove_reader(self._conn.fileno())
            supervisor.abandon()
            return
        supervisor.command(command)

    def send(self, message: UpMessage) -> None:
        if not self._pending:
            self._loop.at_turn_end(self._flush)
        self._pending.append(message)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for message in pending:
            try:
                self._conn.send(message)
            except OSError:
                return  # parent gone: nobody to tell; the parent-death signal ends us
