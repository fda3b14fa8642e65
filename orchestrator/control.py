"""Run directory, 0600 Unix control socket and its JSON-lines protocol (server and client)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from orchestrator.errors import RuntimeFailure
from orchestrator.loop import Loop

ENV_RUN_DIR = "ORCH_RUN_DIR"
SOCKET_NAME = "control.sock"
LOCK_NAME = "lock"
LOG_NAME = "output.log"
# A request is one JSON object on one line; anything longer is refused unread.
MAX_REQUEST = 64 * 1024
MAX_PENDING_CLIENTS = 1024
# Fairness: requests answered per client per loop turn, and replies a client may
# leave unread before we stop answering it.
LINES_PER_TURN = 16
MAX_OUTBOX = 4 * 1024 * 1024
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107

Handler = Callable[[dict], dict]


class AlreadyRunning(RuntimeFailure):
    pass


def run_base(environ: Optional[Mapping[str, str]] = None, uid: Optional[int] = None) -> Path:
    """Where run directories live: $ORCH_RUN_DIR, $XDG_RUNTIME_DIR/orch or /tmp/orch-<uid>."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_RUN_DIR):
        return Path(environ[ENV_RUN_DIR])
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "orch"
    return Path(f"/tmp/orch-{os.getuid() if uid is None else uid}")


def tree_dir(name: str) -> Path:
    return run_base() / name


class RunDir:
    """The root's claim on `<base>/<name>/`: an flock held for the root's lifetime."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = tree_dir(name)
        self.socket_path = self.path / SOCKET_NAME
        self.log_path = self.path / LOG_NAME
        self._lock_fd: Optional[int] = None

    def acquire(self) -> None:
        _check_socket_path(self.socket_path)
        _make_private_dir(self.path)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(_already_running_message(self.name)) from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # Whoever held the lock before us is gone: its socket is stale.
        _unlink_quietly(self.socket_path)

    def release(self) -> None:
        _unlink_quietly(self.socket_path)
        if self._lock_fd is not None:
            # The lock file stays: unlinking it would let a root that opened the old
            # file and one that creates a new file both hold "the" lock.
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None


def _check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise RuntimeFailure(f"control socket path {path} is too long for a Unix socket "
                             f"({MAX_SOCKET_PATH} bytes at most); set {ENV_RUN_DIR} to a shorter directory")


def _make_private_dir(path: Path) -> None:
    for directory in (path.parent, path):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_uid != os.getuid():
            # Someone else made our run directory (in /tmp, say): never trust it.
            raise RuntimeFailure(f"{directory} belongs to another user; remove it or set {ENV_RUN_DIR}")
    os.chmod(path, 0o700)


def _already_running_message(name: str) -> str:
    try:
        pid = (tree_dir(name) / LOCK_NAME).read_text().strip() or "?"
    except OSError:
        pid = "?"
    return (f"tree {name!r} is already running (root pid {pid}); "
            f"see it with `orch tree {name}` or stop it with `orch down {name}`")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ----- server ---------------------------------------------------------------


class ControlServer:
    """Serves JSON-lines requests inside the root's loop; a bad client never blocks it."""

    def __init__(self, loop: Loop, path: Path, handler: Handler) -> None:
        self._loop = loop
        self._handler = handler
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600, never wider
        try:
            self._sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        self._sock.listen(MAX_PENDING_CLIENTS)
        self._sock.setblocking(False)
        self._clients: Dict[int, "_Client"] = {}
        loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.close()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EMFILE and friends: the client sees a reset, the root carries on
        conn.setblocking(False)
        client = _Client(conn, self._loop, self._handler, self._forget)
        self._clients[conn.fileno()] = client

    def _forget(self, client: "_Client") -> None:
        self._clients.pop(client.fd, None)


class _Client:
    """One connection. Requests are answered a few per loop turn, and not while the
    client is not reading its replies, so no client can monopolise the root."""

    def __init__(self, conn: socket.socket, loop: Loop, handler: Handler, forget) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self._loop = loop
        self._handler = handler
        self._forget = forget
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._eof = False
        self._closed = False
        self._scheduled = False
        loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self._loop.remove_reader(self.fd)
        self._inbox += data
        if b"\n" not in self._inbox and len(self._inbox) > MAX_REQUEST:
            self._inbox.clear()
            self._eof = True
            self._loop.remove_reader(self.fd)
            self._queue_reply({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
        self._process()

    def _process(self) -> None:
        self._scheduled = False
        handled = 0
        while not self._closed and b"\n" in self._inbox and len(self._outbox) < MAX_OUTBOX:
            if handled == LINES_PER_TURN:
                self._schedule()
                return
            end = self._inbox.index(b"\n")
            line = bytes(self._inbox[:end])
            del self._inbox[:end + 1]
            self._queue_reply(self._answer(line))
            handled += 1
        self._maybe_close()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_later(0, self._process)

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError as error:
            return {"ok": False, "error": f"request is not JSON: {error}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object like {"cmd": "tree"}'}
        try:
            return self._handler(request)
        except Exception as error:  # a bug in one command must not take the root down
            return {"ok": False, "error": f"internal error in {request['cmd']!r}: {error!r}"}

    def _queue_reply(self, response: dict) -> None:
        self._outbox += json.dumps(response).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        if self._closed:
            return
        try:
            sent = self.conn.send(self._outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()  # the client went away: its remaining requests are dropped
            return
        del self._outbox[:sent]
        self._loop.set_writer(self.fd, self._flush if self._outbox else None)
        if len(self._outbox) < MAX_OUTBOX and b"\n" in self._inbox:
            self._schedule()  # replies drained: carry on with waiting requests
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._eof and not self._outbox and b"\n" not in self._inbox:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        self._loop.set_writer(self.fd, None)
        self.conn.close()
        self._forget(self)


# ----- client ---------------------------------------------------------------


class NotRunning(RuntimeFailure):
    pass


def request(name: str, command: dict, timeout: float = 10.0) -> dict:
    """Send one request to tree `name` and return its reply; NotRunning if nobody answers."""
    path = tree_dir(name) / SOCKET_NAME
    _check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            _connect(sock, path, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            _clean_if_stale(name)
            raise NotRunning(f"tree {name!r} is not running") from None
        sock.settimeout(timeout)
        sock.sendall(json.dumps(command).encode() + b"\n")
        return json.loads(_read_line(sock))
    except socket.timeout:
        raise RuntimeFailure(f"tree {name!r} did not answer within {timeout:g}s") from None
    except (OSError, ValueError) as error:
        raise RuntimeFailure(f"talking to tree {name!r} failed: {error}") from None
    finally:
        sock.close()


def _connect(sock: socket.socket, path: Path, timeout: float) -> None:
    """Connect, waiting while the root's accept backlog is full (EAGAIN on Unix sockets)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            sock.connect(os.fspath(path))
            return
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise socket.timeout() from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _read_line(sock: socket.socket) -> bytes:
    chunks: List[bytes] = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ValueError("the root closed the connection without answering")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


def _clean_if_stale(name: str) -> None:
    """Remove the run directory of a root that died without cleaning up."""
    directory = tree_dir(name)
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _unlink_quietly(directory / SOCKET_NAME)
    except BlockingIOError:
        return  # a root holds the lock: it is starting, not stale
    finally:
        if fd is not None:
            os.close(fd)


def running_trees() -> List[str]:
    """Names of trees whose root answers on its socket (stale ones are cleaned)."""
    base = run_base()
    try:
        names = sorted(entry.name for entry in base.iterdir() if entry.is_dir())
    except OSError:
        return []
    alive = []
    for name in names:
        try:
            request(name, {"cmd": "ping"}, timeout=5.0)
        except RuntimeFailure:
            continue
        alive.append(name)
    return alive
