"""Readiness and heartbeat for Python workers, over the sd_notify protocol.

orch gives every worker `NOTIFY_SOCKET` (and `WATCHDOG_USEC`/`WATCHDOG_PID` when
its node has a `watchdog`), exactly as systemd does, so these functions work
under systemd too. Outside either (no `NOTIFY_SOCKET`) they do nothing and
return False; otherwise they return True once the datagram is sent.

Stdlib only: this module is imported by worker code.
"""
from __future__ import annotations

import os
import socket

__all__ = ["ready", "heartbeat", "status", "extend_timeout", "notify"]


def notify(message: str) -> bool:
    """Send one raw sd_notify datagram (`KEY=VALUE` lines); False if there is nowhere to send it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace, as systemd writes it
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("utf-8", "replace"), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    """Tell the supervisor this worker is ready (`READY=1`): the next sibling may start."""
    return notify("READY=1")


def heartbeat() -> bool:
    """Reset the watchdog timer (`WATCHDOG=1`); send it at least every `watchdog` seconds."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status shown beside the node in `orch tree` (`STATUS=...`)."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more from now to become ready (`EXTEND_TIMEOUT_USEC`)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")
