"""Run directory, 0600 Unix control socket and its JSON-lines protocol (client side).

The root's side, the server, is orchestrator.root.ctlserver."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import List, Mapping, Optional

from orchestrator.errors import RuntimeFailure, UsageError
from orchestrator.spec.names import name_problem

ENV_RUN_DIR = "ORCH_RUN_DIR"
SOCKET_NAME = "control.sock"
LOCK_NAME = "lock"
# A request is one JSON object on one line; a longer one is refused. Requests carry
# a tree file's text, so this leaves room for any sane file.
MAX_REQUEST = 1024 * 1024
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


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


class RunDirError(UsageError):
    """The run directory cannot be used as it is (exit 2: the environment is bad input)."""


def tree_dir(name: str) -> Path:
    """`<base>/<name>`; `name` must be a valid tree name, so this is always one level down."""
    problem = name_problem(name) if isinstance(name, str) else "a tree name is a string"
    if problem:
        raise UsageError(f"{name!r} is not a tree name: {problem}")
    return run_base() / name


class RunDir:
    """The root's claim on `<base>/<name>/`: an flock held for the root's lifetime."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = tree_dir(name)
        self.socket_path = self.path / SOCKET_NAME
        self._lock_fd: Optional[int] = None

    def acquire(self) -> None:
        _check_socket_path(self.socket_path)
        make_private_dir(self.path)
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


def make_private_dir(path: Path) -> None:
    """Create the run base and `path` (0700) as needed, and check what was already there.

    orch never changes the mode of a directory it did not create: a tree's directory
    that exists must already be ours and private, or we refuse to use it.
    """
    for directory in (path.parent, path):
        try:
            _make_dir(directory)
            info = directory.stat()
        except OSError as error:
            raise RunDirError(f"cannot use run directory {directory}: {error.strerror or error}; "
                              f"set {ENV_RUN_DIR} to a directory of yours") from None
        if not stat.S_ISDIR(info.st_mode):
            raise RunDirError(f"run directory {directory} is not a directory; set {ENV_RUN_DIR} "
                              "to a directory of yours")
        if info.st_uid != os.getuid():
            # Someone else made our run directory (in /tmp, say): never trust it.
            raise RunDirError(f"{directory} belongs to another user; remove it or set {ENV_RUN_DIR}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RunDirError(f"run directory {path} is mode {mode:04o}, readable by others; orch keeps "
                          f"it private: `chmod 700 {path}` or remove it")


def _make_dir(directory: Path) -> None:
    try:
        # umask can only narrow 0700, never widen it.
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        directory.parent.mkdir(parents=True, exist_ok=True)  # above the run base: not ours to chmod
        os.mkdir(directory, 0o700)


def _already_running_message(name: str) -> str:
    try:
        pid = (tree_dir(name) / LOCK_NAME).read_text().strip()
    except OSError:
        pid = ""
    # An empty lock file: the root that holds it has not written its pid yet.
    holder = f"root pid {pid}" if pid else "its root is just starting"
    return (f"tree {name!r} is already running ({holder}); "
            f"see it with `orch tree {name}` or stop it with `orch down {name}`")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ----- client ---------------------------------------------------------------


class NotRunning(RuntimeFailure):
    pass


def request(name: str, command: dict, timeout: float = 10.0) -> dict:
    """Send one request to tree `name` and return its reply; NotRunning if nobody answers."""
    path = tree_dir(name) / SOCKET_NAME
    _check_socket_path(path)
    line = json.dumps(command).encode() + b"\n"
    if len(line) > MAX_REQUEST:
        # The root would refuse it unread; say why here, where it can be fixed.
        raise UsageError(f"the request to tree {name!r} is {len(line):,} bytes; the control socket "
                         f"takes at most {MAX_REQUEST:,} (a tree file that large cannot be reloaded)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            _connect(sock, path, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            # A stale socket is left alone: only a root may take the tree's lock, even for a
            # moment (a client holding it would make a root starting then refuse to run), and
            # the next root removes the socket once the lock is its own.
            raise NotRunning(f"tree {name!r} is not running") from None
        sock.settimeout(timeout)
        sock.sendall(line)
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


def running_trees() -> List[str]:
    """Names of trees whose root answers on its socket."""
    base = run_base()
    try:
        names = sorted(entry.name for entry in base.iterdir()
                       if entry.is_dir() and not name_problem(entry.name))
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
