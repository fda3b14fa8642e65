"""How a supervisor reports to whoever is above it: its parent supervisor, or the root's table."""
from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Optional, Protocol

from orchestrator.engine.loop import Loop

# Messages travel up as tuples, forwarded unchanged by every supervisor on the way:
#   ("node", path, pid, state, restarts, started_at, failures)   a child changed state
#   ("ready", path)                                     a supervisor's subtree is up
#   ("gave_up", path, reason)                           a supervisor exceeded its intensity
#   ("applied", path, generation)                       a supervisor finished applying a spec
# and down, each supervisor passing on what is for a node below it:
#   ("apply", node_spec, tree_context, generation)      go to this spec (reload, stop/start)
#   ("restart", path)                                   restart this node


class Uplink(Protocol):
    def attach(self, supervisor) -> None: ...
    def node_event(self, path: str, pid: Optional[int], state: str, restarts: int,
                   started_at: Optional[float], failures: int) -> None: ...
    def ready(self, path: str) -> None: ...
    def gave_up(self, path: str, reason: str) -> None: ...
    def applied(self, path: str, generation: int) -> None: ...
    def forward(self, message: tuple) -> None: ...


class PipeUplink:
    """A supervisor below the root: sends to its parent over a multiprocessing pipe."""

    def __init__(self, conn: Connection, loop: Loop) -> None:
        self._conn = conn
        self._loop = loop
        self._supervisor = None

    def attach(self, supervisor) -> None:
        self._supervisor = supervisor
        self._loop.add_reader(self._conn.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            # The parent is gone (the parent-death signal usually beats this).
            self._loop.remove_reader(self._conn.fileno())
            self._supervisor.abandon()
            return
        self._supervisor.command(message)

    def node_event(self, path, pid, state, restarts, started_at, failures) -> None:
        self._send(("node", path, pid, state, restarts, started_at, failures))

    def ready(self, path: str) -> None:
        self._send(("ready", path))

    def gave_up(self, path: str, reason: str) -> None:
        self._send(("gave_up", path, reason))

    def applied(self, path: str, generation: int) -> None:
        self._send(("applied", path, generation))

    def forward(self, message: tuple) -> None:
        self._send(message)

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError:
            pass  # parent gone: nobody to tell; the parent-death signal ends us
