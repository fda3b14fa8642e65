"""Relays a worker's stdout/stderr pipe to our stdout, each line prefixed by the node path."""
from __future__ import annotations

import os
import sys
from typing import Callable

# A line longer than this is flushed in pieces so one chatty worker cannot make
# its supervisor buffer without bound.
MAX_LINE = 64 * 1024


def write_out(data: bytes) -> None:
    """Write whole lines to our stdout fd at once (lines of different nodes never mix)."""
    try:
        os.write(sys.stdout.fileno(), data)
    except (OSError, ValueError):
        pass  # stdout closed (terminal gone): output is best effort, supervision is not


def log(message: str) -> None:
    """The supervisor's own messages, on stderr so they survive `orch up > file`."""
    try:
        os.write(sys.stderr.fileno(), f"orch: {message}\n".encode(errors="replace"))
    except (OSError, ValueError):
        pass


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
