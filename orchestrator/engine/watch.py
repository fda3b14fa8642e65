"""A supervisor's node processes in its loop: started, their fds watched, reaped on exit.

The loop tells us when a process has exited (its exit fd), when a worker wrote
output (relayed to the node's log file and our stdout, relay.py) and when a
supervisor child sent a message; the supervisor decides what any of it means.
"""
from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from orchestrator.engine import output
from orchestrator.engine.logfile import Stamps
from orchestrator.engine.loop import Loop
from orchestrator.engine.messages import UpMessage
from orchestrator.engine.relay import NodeLogs, StreamRelay, stdout_is_null
from orchestrator.engine.slot import Slot
from orchestrator.engine.spawn import Running, Starter
from orchestrator.spec.model import TreeContext


def _log_error(path: str, message: str) -> None:
    output.log(f"{path}: {message}")


class ProcessWatch:
    """Starts slots' processes through `starter` and reports their exits and messages.

    It owns the relays of its workers' output and the workers' log files
    (`NodeLogs`): a node's log outlives its processes and is closed when a reload
    removes the node or by `close`. Log write problems go to `on_log_error(path, message)`.
    """

    def __init__(self, loop: Loop, starter: Starter, on_exit: Callable[[Slot], None],
                 on_message: Callable[[Slot, UpMessage], None],
                 on_log_error: Callable[[str, str], None] = _log_error) -> None:
        self._loop = loop
        self._starter = starter
        # Started and not reaped yet, kept as we go: the root's orphan check asks for
        # this set on every burst of exits, and rebuilding it was O(N) each time.
        self._pids: Set[int] = set()
        self._on_exit = on_exit
        self._on_message = on_message
        self._logs = NodeLogs(on_log_error)
        self._relays: Dict[int, StreamRelay] = {}  # by fd
        self._stamps = Stamps()
        self._echo: Optional[bool] = None  # False when our stdout is /dev/null (detached): no echo work
        self._closing = False

    def start(self, slot: Slot, tree: TreeContext) -> Running:
        """Start a process for `slot` and watch it. Raises OSError if it cannot be forked."""
        running = self._starter.start(slot.spec, tree)
        self._pids.add(running.pid)
        self._loop.add_reader(running.exit_fd, lambda: self._on_exit(slot))
        pipes = _output_pipes(running)
        if pipes:
            path = slot.spec.path
            log = self._logs.acquire(path, tree.name, tree.log, len(pipes))
            if self._echo is None:  # looked at once our fd 1 is set up (the first start)
                self._echo = not stdout_is_null()
            echo = f"{path} | ".encode() if self._echo else None
            for stream, fd in pipes:
                relay = StreamRelay(fd, stream, running.pid, log, echo, self._stamps, self._close_relay)
                self._relays[fd] = relay
                self._loop.add_reader(fd, relay.on_readable)
        if running.uplink is not None:
            uplink = running.uplink
            self._loop.add_reader(uplink.fileno(), lambda: self._on_readable(slot, uplink))
        return running

    def reap(self, slot: Slot) -> int:
        """Stop watching `slot`'s exited process and collect its exit code.

        Messages it sent before it exited are handled first. Helpers a worker
        forked share its process group and are killed: none outlives it. The
        output relays go on until their pipes' EOF.
        """
        running = slot.running
        assert running is not None  # its exit fd fired: it was started
        if running.uplink is not None:
            self._drain(slot, running.uplink)
            self._loop.remove_reader(running.uplink.fileno())
        self._loop.remove_reader(running.exit_fd)
        code = self._starter.reap(running)
        self._pids.discard(running.pid)
        if not slot.spec.is_supervisor:
            self._starter.kill_group(running)
            if slot.retired:
                self._logs.retire(slot.spec.path)
        return code

    def pids(self) -> FrozenSet[int]:
        """Pids of the processes started and not reaped yet."""
        return frozenset(self._pids)

    def close(self) -> None:
        """The supervisor exits: relay what its workers left in their pipes, close every log.

        Bounded (the writers have exited) and never blocking; the loop may be closed already.
        """
        self._closing = True
        for relay in list(self._relays.values()):
            relay.drain()
        self._logs.close()

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

    def _close_relay(self, relay: StreamRelay) -> None:
        if not self._closing:
            self._loop.remove_reader(relay.fd)
        del self._relays[relay.fd]
        os.close(relay.fd)
        if relay.log is not None:
            self._logs.release(relay.log)


def _output_pipes(running: Running) -> List[Tuple[str, int]]:
    """A worker's (stream, read fd) pairs. getattr: a unit test's fake process may have no pipes."""
    pipes: List[Tuple[str, Optional[int]]] = [
        ("stdout", getattr(running, "stdout_fd", None)), ("stderr", getattr(running, "stderr_fd", None))]
    return [(stream, fd) for stream, fd in pipes if fd is not None]
