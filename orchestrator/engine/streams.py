"""Our own stdout and stderr: never missing, never blocking, bounded, whole lines.

Every supervisor process writes relayed worker lines to fd 1 and its own messages
to fd 2 through a `Sink`. A sink writes without blocking; while the terminal or
pipe is not read it keeps a bounded backlog of whole lines (written when the
loop says the fd is writable), then drops whole lines and, once the stream
catches up with the gap, writes one line saying how many were dropped. A
supervisor stuck in write() would not reap, restart, answer or stop.

`fill_closed_std_fds` and `make_std_fds_nonblocking` prepare fds 0-2 for that.
"""
from __future__ import annotations

import atexit
import errno
import os
import select
import stat
import sys
from typing import Dict, Optional, Union

from orchestrator.engine.loop import Loop

# Backlog per stream, in bytes of whole lines; beyond it new lines are dropped.
LIMIT = 256 * 1024
# Errors after which the stream is gone for good: write nothing more to it.
GONE = (errno.EPIPE, errno.EBADF, errno.EIO, errno.ENXIO)
NAMES = {1: "stdout", 2: "stderr"}
# Bytes handed to one write() on anything but a pipe (whose writes are cut at PIPE_BUF).
MAX_CHUNK = 64 * 1024


class Sink:
    """Writes whole lines to one fd without blocking; bounded backlog, counted drops."""

    def __init__(self, fd: int, loop: Optional[Loop] = None) -> None:
        self.fd = fd
        self.loop = loop  # writes the backlog when the fd is writable; None: next write does
        self._pending = bytearray()  # whole lines; the first one may be partly written
        self._dropped = 0  # lines dropped since the last notice
        self._gone = False
        self._watching = False
        self._chunk = _chunk_size(fd)

    def write(self, data: bytes) -> None:
        if self._gone or not data:
            return
        self._queue(data)
        self.flush()

    def flush(self) -> None:
        """Write as much of the backlog as the fd takes now; watch it for the rest."""
        while (self._pending or self._dropped) and not self._gone:
            if not self._pending:
                self._note_gap()  # caught up: say what was lost here
            try:
                written = os.write(self.fd, self._next_chunk())
            except BlockingIOError:
                break
            except OSError as error:
                self._fail(error)
                break
            del self._pending[:written]  # cheap: bytearray deletes from the front in O(1)
        self._watch(bool(self._pending) and not self._gone)

    def detach(self) -> None:
        """Stop using the loop (it is closing); one last try, never blocking."""
        self._watch(False)
        self.loop = None
        self.flush()

    def _queue(self, data: bytes) -> None:
        room = LIMIT - len(self._pending)
        keep = data if len(data) <= room else data[:data.rfind(b"\n", 0, room) + 1]
        if keep:
            self._note_gap()
            self._pending += keep
        self._dropped += _count_lines(data, len(keep))

    def _note_gap(self) -> None:
        if self._dropped:
            lines = f"{self._dropped} line{'s' if self._dropped != 1 else ''}"
            stream = NAMES.get(self.fd, f"fd {self.fd}")
            self._pending += f"orch: {lines} of output dropped: {stream} was not read fast enough\n".encode()
            self._dropped = 0

    def _next_chunk(self) -> bytes:
        """The head of the backlog, cut after a line end.

        On a pipe a write of at most PIPE_BUF bytes is atomic, so lines from the
        other supervisors sharing it never land inside ours; a longer line goes alone.
        """
        pending = self._pending
        if len(pending) <= self._chunk:
            return bytes(pending)
        end = pending.rfind(b"\n", 0, self._chunk) + 1 or pending.find(b"\n") + 1 or len(pending)
        return bytes(pending[:end])

    def _fail(self, error: OSError) -> None:
        if error.errno in GONE:
            self._gone = True  # reader gone or fd closed: drop silently from now on
        else:
            # ENOSPC and the like may pass: drop the backlog (counted), try the next lines
            self._dropped += _count_lines(self._pending, 0)
        self._pending.clear()

    def _watch(self, wanted: bool) -> None:
        if self.loop is None or wanted == self._watching:
            return
        try:
            self.loop.set_writer(self.fd, self.flush if wanted else None)
            self._watching = wanted
        except (OSError, ValueError, RuntimeError):
            self.loop = None  # the loop is closed: the next write flushes instead


def _count_lines(data: Union[bytes, bytearray], start: int) -> int:
    tail = len(data) - start
    if tail <= 0:
        return 0
    return data.count(b"\n", start) + (0 if data.endswith(b"\n") else 1)


def _chunk_size(fd: int) -> int:
    try:
        fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        fifo = False
    return select.PIPE_BUF if fifo else MAX_CHUNK


# ----- this process's sinks -----------------------------------------------------

_owner = os.getpid()
_sinks: Dict[int, Sink] = {}
_loop: Optional[Loop] = None


def sink(fd: int) -> Sink:
    """The sink for fd 1 or 2 in this process."""
    global _owner, _loop
    if _owner != os.getpid():
        # A forked child starts empty: the parent's backlog is the parent's to
        # write (else it would appear twice), and the parent's loop is not ours.
        _owner, _loop = os.getpid(), None
        _sinks.clear()
    found = _sinks.get(fd)
    if found is None:
        found = _sinks[fd] = Sink(fd, _loop)
    return found


def attach(loop: Loop) -> None:
    """Write backlogs from `loop` (called by the supervisor that runs it)."""
    global _loop
    sink(1)  # resets the state first if we were forked
    _loop = loop
    for each in _sinks.values():
        each.loop = loop
        each.flush()


def detach() -> None:
    """The loop is about to close: flush once more without it, never blocking."""
    global _loop
    _loop = None
    sink(1)
    for each in _sinks.values():
        each.detach()


@atexit.register
def _flush_at_exit() -> None:
    if _owner == os.getpid():
        for each in _sinks.values():
            each.detach()


# ----- preparing fds 0-2 ------------------------------------------------------


def fill_closed_std_fds() -> None:
    """Open /dev/null on each of fds 0-2 that is closed, and give Python streams for them.

    Otherwise the next pipe, socket or pidfd we open would become fd 1 or 2, and
    worker output would be written into it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, "r", closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", buffering=1, closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)


def make_std_fds_nonblocking() -> None:
    """Make writes to fds 1 and 2 non-blocking, for this process and the ones it forks.

    O_NONBLOCK lives in the open file description, which a terminal or pipe shares
    with the user's shell (setting it there breaks the shell). So a tty or pipe is
    reopened through /proc (a description of our own) and put in its place; a
    socket (journald) gets the flag itself; a regular file never blocks anyway.
    """
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            os.set_blocking(fd, False)
        elif stat.S_ISFIFO(mode) or os.isatty(fd):
            _reopen_nonblocking(fd)
    _sinks.clear()  # a sink made earlier looked at the old fd


def _reopen_nonblocking(fd: int) -> None:
    try:
        new = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        # ENXIO: the pipe has no reader left, so writes fail at once and never
        # block. No /proc, or no permission: keep the fd as it is.
        return
    os.dup2(new, fd)
    os.close(new)
