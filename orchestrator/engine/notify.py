"""A supervisor's sd_notify socket: readiness, heartbeats and status from its workers.

One AF_UNIX datagram socket per supervisor, with SO_PASSCRED so the kernel tells
us each sender's pid; the supervisor decides which node (if any) a pid speaks for.
It is one more fd in the supervisor's loop: no threads, no polling.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Callable, Dict, List, Optional

from orchestrator.engine.loop import Loop

# Where a supervisor tells its worker processes to send (worker_main turns it into
# NOTIFY_SOCKET); our own NOTIFY_SOCKET, if systemd gave us one, is left alone.
ADDRESS_ENV = "ORCH_NOTIFY_SOCKET"
# The run directory a tree's supervisors put their sockets in (set by the root).
DIR_ENV = "ORCH_NOTIFY_DIR"
MAX_DATAGRAM = 4096
_SUN_PATH_MAX = 107
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_MAX_FDS = 16  # a BARRIER=1 carries one; more are dropped (closed) by the kernel
_ANCILLARY = socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(_MAX_FDS * 4)

Handler = Callable[[int, Dict[str, str]], None]


def parse(data: bytes) -> Dict[str, str]:
    """`KEY=VALUE` lines of one datagram; lines without '=' are ignored, the last of a key wins."""
    fields: Dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


def socket_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"notify-{pid}.sock")


def remove_socket_of(pid: int, directory: Optional[str]) -> None:
    """Remove the socket file a supervisor process that exited may have left (SIGKILL)."""
    if directory:
        try:
            os.unlink(socket_path(directory, pid))
        except OSError:
            pass


class NotifySocket:
    """Receives sd_notify datagrams; `on_message(sender_pid, fields)` for each."""

    def __init__(self, loop: Loop, on_message: Handler, directory: Optional[str] = None) -> None:
        self._loop = loop
        self._on_message = on_message
        self._path: Optional[str] = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            self.address = self._bind(directory)
            self._sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _bind(self, directory: Optional[str]) -> str:
        """Bind to DIR/notify-PID.sock (0600), or an abstract address if that path is too long."""
        if directory:
            path = socket_path(directory, os.getpid())
            if len(os.fsencode(path)) <= _SUN_PATH_MAX and os.path.isdir(directory):
                try:
                    os.unlink(path)  # left by a dead process that had our pid
                except OSError:
                    pass
                old = os.umask(0o177)
                try:
                    self._sock.bind(path)
                finally:
                    os.umask(old)
                os.chmod(path, 0o600)
                self._path = path
                return path
        name = f"orch-notify-{os.getpid()}-{os.urandom(4).hex()}"
        self._sock.bind("\0" + name)
        return "@" + name  # systemd's spelling of an abstract address

    def _on_readable(self) -> None:
        for _ in range(64):  # bounded work per loop turn; the rest stays queued
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            fds: List[int] = []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS.size:
                    pid = _CREDS.unpack_from(payload)[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) - len(payload) % 4]))
            try:
                if pid > 0:
                    self._on_message(pid, parse(data))
            finally:
                # sd_notify_barrier (BARRIER=1, as `systemd-notify` sends after READY=1): the
                # sender waits for us to close its fd, so it is still alive (and its process
                # group known) while we handle what it sent before.
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def close(self) -> None:
        """Stop listening, close the socket and remove its file."""
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, OSError):
            pass
        self._sock.close()
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._path = None
