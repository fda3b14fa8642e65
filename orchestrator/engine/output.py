"""Relays a worker's stdout/stderr pipe to our stdout, each line prefixed by the node path.

Our own stdout and stderr are written through `streams` sinks, which never block."""
from __future__ import annotations

import os
from typing import Callable, Optional

from orchestrator.engine import streams


def write_out(data: bytes) -> None:
    """Whole lines to our stdout, each written whole (lines of different nodes never mix)."""
    streams.sink(1).write(data)


def log(message: str) -> None:
    """The supervisor's own messages: on stderr (they survive `orch up > file`), and to
    orch.log through whatever `forward_log` set in this process."""
    streams.sink(2).write(f"orch: {message}\n".encode(errors="replace"))
    if _forward is not None and _forward_owner == os.getpid():
        _forward(message)


_forward: Optional[Callable[[str], None]] = None
_forward_owner = 0  # a forked child inherits the function but must not call it


def forward_log(to: Optional[Callable[[str], None]]) -> None:
    """Also hand every `log` message of this process to `to` (the root writes orch.log;
    a supervisor below sends its messages up to it). None stops it."""
    global _forward, _forward_owner
    _forward, _forward_owner = to, os.getpid()
