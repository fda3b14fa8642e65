"""Telling systemd how `orch up` is doing (the sd_notify protocol), stdlib only.

`orch up` takes NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID out of its own
environment before it forks (`Notifier.take`), so no worker inherits them: a worker
writing READY=1 to systemd's socket would speak for the whole service. The root then
sends READY=1 once the tree is up, RELOADING=1 / READY=1 around a reload,
STOPPING=1 when it stops, and WATCHDOG=1 from a timer of its loop. Each message is
one datagram on a socket opened for it; a failure is never raised (systemd gone, a
full queue): the tree matters more than the service manager hearing about it.
"""
from __future__ import annotations

import os
import socket
import time
from typing import MutableMapping, Optional

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends sd_notify datagrams to one address (`@name` is an abstract socket)."""

    def __init__(self, address: str, main_pid: int, watchdog_usec: Optional[int] = None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.main_pid = main_pid  # the `orch up` process systemd started: the guardian
        self.watchdog_usec = watchdog_usec

    @classmethod
    def take(cls, environ: MutableMapping[str, str], pid: int) -> Optional["Notifier"]:
        """Remove systemd's variables from `environ` (os.environ: the tree inherits it);
        a notifier if NOTIFY_SOCKET names a unix socket. `pid` is this process's: the
        watchdog is ours only if WATCHDOG_PID is unset or names it."""
        address = environ.pop(ENV_SOCKET, None)
        usec = environ.pop(ENV_WATCHDOG_USEC, None)
        watchdog_pid = environ.pop(ENV_WATCHDOG_PID, None)
        if not address or not (address.startswith("/") or address.startswith("@")):
            return None  # unset, or a kind of address we do not speak (vsock:...)
        watchdog = None
        if usec and (watchdog_pid is None or watchdog_pid.strip() == str(pid)):
            try:
                watchdog = int(usec)
            except ValueError:
                watchdog = None
        return cls(address, pid, watchdog if watchdog and watchdog > 0 else None)

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled advises)."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; whether it was sent."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self) -> bool:
        return self.send("READY=1", f"MAINPID={self.main_pid}", "STATUS=running")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253) tell this reload from an earlier one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")
