"""Relays worker output: each pipe read by its supervisor, framed into lines, stamped, logged per node, echoed.

A `StreamRelay` reads one pipe (a worker's stdout or its stderr) once each time
the loop says it is readable, and writes what it read as records to the node's
`NodeLog` and, prefixed by the node path, to our stdout. `NodeLogs` keeps one
`NodeLog` per worker node of a supervisor: the single writer of that node's file.
"""
from __future__ import annotations

import fcntl
import os
import stat
from typing import Callable, Dict, List, Optional, Sequence

from orchestrator.engine.logfile import LogFile, Piece, RecordFormat, Stamps, line_slices
from orchestrator.engine.output import write_out
from orchestrator.spec.model import LogSpec

# A line longer than this is written in pieces (each a record; the later ones
# marked continued), so one chatty worker cannot make its supervisor buffer without bound.
MAX_LINE = 64 * 1024
# A pipe found full on a read is enlarged to this, so a flood costs fewer wakeups
# (only floods: the kernel counts every pipe's size against its user's limit).
BIG_PIPE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Reads of a relay's pipe when its supervisor exits, at most: the writers are gone.
FINAL_READS = 32


def log_path(directory: str, node_path: str) -> str:
    """`<dir>/<node path>.log`; the segments of the path are subdirectories (`pipeline/reader.log`)."""
    return os.path.join(directory, *node_path.split("/")) + ".log"


def stdout_is_null() -> bool:
    """Our fd 1 is /dev/null (a detached tree): no one would see an echo, so none is made."""
    try:
        ours, null = os.fstat(1), os.stat(os.devnull)
    except OSError:
        return False
    if stat.S_ISCHR(ours.st_mode) and stat.S_ISCHR(null.st_mode):
        return ours.st_rdev == null.st_rdev
    return (ours.st_dev, ours.st_ino) == (null.st_dev, null.st_ino)


class NodeLog:
    """One worker node's log: its record format and its file, shared by the relays of its processes.

    It lives across restarts of the node. The fd is released while no process of
    the node has a pipe open (the file is opened again by the next write).
    """

    def __init__(self, tree: str, path: str, spec: LogSpec, on_error: Callable[[str], None]) -> None:
        self.path = path
        self.tree = tree
        self.spec = spec
        self.format = RecordFormat(spec.format, tree, path)
        self.file = LogFile(log_path(spec.dir, path), spec.max_bytes, spec.backups, on_error)
        self.users = 0  # relays writing to it
        self.retired = False  # its node is gone: dropped once its last relay is done

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def close(self) -> None:
        self.file.close()


class NodeLogs:
    """The NodeLog of each worker node of one supervisor, by node path.

    Reload rule: a process started after the tree's LogSpec (or name) changed
    switches its node's NodeLog to the new settings; relays of an older process
    of the node that are still reading write there too, so one node never has two
    writers. Its old file is closed as it is.
    """

    def __init__(self, on_error: Callable[[str, str], None]) -> None:
        self._on_error = on_error
        self._logs: Dict[str, NodeLog] = {}

    def acquire(self, path: str, tree: str, spec: LogSpec, users: int) -> Optional[NodeLog]:
        """The NodeLog of node `path` for `users` more relays; None when the tree keeps no log files."""
        if not spec.dir:
            return None
        log = self._logs.get(path)
        if log is None or (log.spec, log.tree) != (spec, tree):
            fresh = NodeLog(tree, path, spec, lambda message: self._on_error(path, message))
            if log is not None:
                log.close()
                log.format, log.file, log.spec, log.tree = fresh.format, fresh.file, spec, tree
            else:
                log = self._logs[path] = fresh
        log.retired = False  # a node a reload replaced or brought back
        log.users += users
        return log

    def release(self, log: NodeLog) -> None:
        """A relay of `log` is done."""
        log.users -= 1
        if log.users <= 0:
            log.close()
            if log.retired:
                self._drop(log)

    def retire(self, path: str) -> None:
        """Node `path` is gone (a reload removed or replaced it): close its log once its relays are done."""
        log = self._logs.get(path)
        if log is not None:
            log.retired = True
            if log.users <= 0:
                self._drop(log)

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()

    def _drop(self, log: NodeLog) -> None:
        log.close()
        if self._logs.get(log.path) is log:
            del self._logs[log.path]


class StreamRelay:
    """Reads one pipe of one worker process when the loop says it is readable: once per call.

    Lines read together share one timestamp, taken at the read. A partial line
    waits for its end (or EOF); beyond MAX_LINE it is written in pieces.
    """

    def __init__(self, fd: int, stream: str, pid: int, log: Optional[NodeLog], echo: Optional[bytes],
                 stamps: Stamps, on_eof: Callable[["StreamRelay"], None]) -> None:
        self.fd = fd
        self.stream = stream  # "stdout" or "stderr"
        self.pid = pid
        self.log = log
        self._echo = echo  # our stdout's prefix for this node (b"path | "); None: no echo
        self._stamps = stamps
        self._on_eof = on_eof
        self._partial = b""  # the start of a line whose end has not been read
        self._continuing = False  # pieces of the current line were already written
        self._read_size = 65536
        self._grown = False

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, self._read_size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.finish()
            return
        if len(data) == self._read_size and not self._grown:
            self._grow()
        self._take(data)

    def drain(self) -> None:
        """Read what is left (its writers have exited), then finish: bounded, never blocking."""
        for _ in range(FINAL_READS):
            try:
                data = os.read(self.fd, self._read_size)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                break
            self._take(data)
        self.finish()

    def finish(self) -> None:
        """EOF: the last line, even without its newline, then tell the owner."""
        tail, self._partial = self._partial, b""
        if tail:
            self._write_pieces([(tail, self._continuing)])
        self._continuing = False
        self._on_eof(self)

    def _take(self, data: bytes) -> None:
        head = self._partial
        first, end = data.find(b"\n"), data.rfind(b"\n") + 1
        first_line = len(head) + (first if first >= 0 else len(data))
        if self._continuing or first_line > MAX_LINE or len(data) - end > MAX_LINE \
                or not _lines_fit(data, first + 1, end):
            data = head + data
            end = data.rfind(b"\n") + 1
            lines = data[:end].split(b"\n")
            lines.pop()  # after the last b"\n"
            self._write_pieces(self._cut(lines, data[end:]))
            return
        # The common case: whole lines, none too long, formatted and written as one block.
        if not end:
            self._partial = head + data
            return
        self._partial = data[end:]
        if self.log is not None:
            self.log.file.write_parts(self.log.format.records(self._stamps.now(), self.stream, self.pid,
                                                              head, data, end))
        if self._echo is not None:
            echoed = self._echo + head + data.replace(b"\n", b"\n" + self._echo)
            # In slices well under the sink's backlog limit: a big read must not look like a stalled reader.
            for part in line_slices(echoed[:echoed.rfind(b"\n") + 1]):
                write_out(part)

    def _cut(self, lines: Sequence[bytes], partial: bytes) -> List[Piece]:
        """Pieces of at most MAX_LINE bytes of `lines`, and of `partial` beyond MAX_LINE (kept: the rest)."""
        pieces: List[Piece] = []
        continued = self._continuing
        for line in lines:
            while len(line) > MAX_LINE:
                at = _boundary(line, MAX_LINE)
                pieces.append((line[:at], continued))
                line, continued = line[at:], True
            pieces.append((line, continued))
            continued = False
        while len(partial) > MAX_LINE:
            at = _boundary(partial, MAX_LINE)
            pieces.append((partial[:at], continued))
            partial, continued = partial[at:], True
        self._partial, self._continuing = partial, continued
        return pieces

    def _write_pieces(self, pieces: Sequence[Piece]) -> None:
        if not pieces:
            return
        if self.log is not None:
            self.log.write(self.log.format.pieces(self._stamps.now(), self.stream, self.pid, pieces))
        if self._echo is not None:
            for piece, _ in pieces:
                write_out(self._echo + piece + b"\n")

    def _grow(self) -> None:
        """The pipe was full: enlarge it (once; failure is fine) and read that much at a time."""
        self._grown = True
        try:
            size = fcntl.fcntl(self.fd, F_SETPIPE_SZ, BIG_PIPE)
        except OSError:
            return
        self._read_size = max(self._read_size, size)


def _lines_fit(data: bytes, start: int, end: int) -> bool:
    """Whether no line of data[start:end] (whole lines) is longer than MAX_LINE: a few C searches per MiB."""
    while end - start > MAX_LINE + 1:
        newline = data.rfind(b"\n", start, start + MAX_LINE + 1)
        if newline < 0:
            return False
        start = newline + 1
    return True


def _boundary(data: bytes, limit: int) -> int:
    """Where to cut `data` at `limit` or just before, so no UTF-8 character is split."""
    for at in range(limit, max(limit - 4, 0), -1):
        if data[at] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return at
    return limit  # not UTF-8 there anyway
