"""Relays a worker's stdout/stderr pipe to our stdout, each line prefixed by the node path.

Our own stdout and stderr are written through `streams` sinks, which never block."""
from __future__ import annotations

import os
from typing import Callable

from orchestrator.engine import streams

# A line longer than this is flushed in pieces so one chatty worker cannot make
# its supervisor buffer without bound.
MAX_LINE = 64 * 1024


def write_out(data: bytes) -> None:
    """Whole lines to our stdout, each written whole (lines of different nodes never mix)."""
    streams.sink(1).write(data)


def log(message: str) -> None:
    """The supervisor's own messages, on stderr so they survive `orch up > file`."""
    streams.sink(2).write(f"orch: {message}\n".encode(errors="replace"))


class OutputRelay:
    """Reads one worker's pipe when the loop says it is readable."""

    def __init__(self, fd: int, path: str, on_eof: Callable[["OutputRelay"], None]) -> None:
        self.fd = fd
        self._prefix = f"{path} | ".encode()
        self._partial = b""
        self._on_eof = on_eof

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._flush(self._partial)
            self._partial = b""
            self._on_eof(self)
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        if lines:
            write_out(b"".join(self._prefix + line + b"\n" for line in lines))

    def _flush(self, tail: bytes) -> None:
        if tail:
            write_out(self._prefix + tail + b"\n")
