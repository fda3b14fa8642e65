"""Linux process primitives (prctl, pidfd, fd hygiene) that degrade to no-ops elsewhere."""
from __future__ import annotations

import contextlib
import functools
import os
import signal
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Optional, Union

if TYPE_CHECKING:  # ctypes is loaded with libc, on the first prctl: `orch tree` reads /proc through us
    import ctypes

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36

# Signals the loop handles; blocked around fork so a child never runs the
# parent's handler (which would wake the parent's loop with the child's signal).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
# Blocked around fork too: the root handles SIGCHLD, and a child must not run
# that handler before it has reset its signals.
BLOCKED_AROUND_FORK = HANDLED_SIGNALS + (signal.SIGCHLD,)
# Sent to a supervisor to make it SIGKILL its subtree at once and exit: the fast
# path for daemon supervisors and for a second Ctrl-C.
KILL_SUBTREE = signal.SIGUSR1
# The C module `signal` wraps: the same calls without turning every number into an enum
# member (which costs a restart's fork and its child measurable time: they run on every start).
C_SIGNAL: Any = getattr(signal, "_signal", signal)
_BLOCKED_NUMBERS = [int(signum) for signum in BLOCKED_AROUND_FORK]


@functools.lru_cache(maxsize=None)
def _libc() -> Optional[ctypes.CDLL]:
    """The C library, found through the running program's own symbols (dlopen(NULL)): no
    ctypes.util.find_library, which runs ldconfig or a compiler in every process that asks.
    Loaded once per process, and inherited by forked children."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if hasattr(libc, "prctl"):
            return libc
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c") or None, use_errno=True)
    except (OSError, AttributeError):
        return None


def _prctl(option: int, value: Union[int, ctypes.c_char_p]) -> bool:
    prctl = getattr(_libc(), "prctl", None)
    if prctl is None:
        return False
    return prctl(option, value, 0, 0, 0) == 0


def die_with_parent(expected_parent: int, signum: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `signum` when our parent dies; exit if it already has.

    Called in the child: the parent may have died between fork and this call, in
    which case we were reparented and the signal will never come.
    """
    _prctl(_PR_SET_PDEATHSIG, int(signum))
    if os.getppid() != expected_parent:
        os._exit(1)


def become_subreaper(on: bool = True) -> bool:
    """Make orphaned descendants reparent to us instead of to pid 1 (`on=False`: stop)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, int(on))


def set_process_name(name: str) -> None:
    """Set the kernel's short name (shown by `ps -o comm`, `top`); 15 bytes at most."""
    import ctypes

    _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def open_exit_fd(pid: int, fallback_sentinel: int) -> tuple[int, bool]:
    """An fd that becomes readable when `pid` exits, and whether we own it.

    A pidfd is exact. multiprocessing's sentinel pipe is only a fallback: under
    fork every grandchild inherits its write end, so a SIGKILLed supervisor would
    look alive until its whole subtree exits.
    """
    try:
        return os.pidfd_open(pid), True
    except (AttributeError, OSError):
        return fallback_sentinel, False


# closerange() is one close_range(2) call on Linux whatever the span, so there is
# no need to list /proc/self/fd first (that listing made bring-up quadratic).
_FD_CEILING = 2**31 - 1


def close_fds_except(keep: Iterable[int]) -> None:
    """Close every fd above stderr except `keep` (fork children inherit them all)."""
    start = 3
    for fd in sorted(set(keep)) + [_FD_CEILING]:
        if fd >= start:
            os.closerange(start, fd)
            start = fd + 1


def ensure_fd_limit(needed: int) -> None:
    """Raise the soft fd limit towards the hard one when `needed` fds would not fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    old = C_SIGNAL.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_NUMBERS)
    try:
        yield
    finally:
        C_SIGNAL.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock_handled_signals() -> None:
    C_SIGNAL.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED_NUMBERS)


def reset_signals_after_start() -> None:
    """In a new node process: no wakeup fd, default dispositions for what the parent handled,
    SIGINT raising KeyboardInterrupt (signals stay blocked: the caller unblocks them)."""
    C_SIGNAL.set_wakeup_fd(-1)
    for signum in _BLOCKED_NUMBERS:
        C_SIGNAL.signal(signum, C_SIGNAL.SIG_DFL)
    C_SIGNAL.signal(int(signal.SIGINT), C_SIGNAL.default_int_handler)


def children_of_self() -> List[int]:
    """Pids whose parent is this process (Linux /proc; empty where unavailable).

    Processes that fork run no threads (a rule of this project), so the main
    thread's list is all of them."""
    return children_of(os.getpid(), threads=1)


def children_of(pid: int, threads: int = 0) -> List[int]:
    """Children of `pid`; empty once it is gone. Each thread lists only the children it
    forked, so every thread's list is read, unless the caller knows `pid` has a single
    thread (`threads == 1`, e.g. from /proc/PID/stat): then one read is enough."""
    tids = [str(pid)] if threads == 1 else _threads(pid)
    found: List[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb", buffering=0) as file:
                found.extend(int(field) for field in file.readall().split())
        except OSError:
            continue
    return found


def cmdline(pid: Union[int, str]) -> str:
    """The command line of `pid`, arguments joined by spaces; "" once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb", buffering=0) as file:
            return file.readall().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _threads(pid: int) -> List[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def reap_if_dead(pid: int) -> bool:
    """Reap `pid` if it has exited; True if it is gone (reaped now or not our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def signal_group_or_pid(pid: int, signum: int) -> None:
    """Signal the process group led by a child we just started, or the child itself
    if it has not reached setpgid() yet (its signals are blocked until then, so the
    signal waits for it and takes effect once it is set up)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        send(pid, signum)
    except PermissionError:
        pass


def send(pid: int, signum: int, group: bool = False) -> None:
    """Signal a process (or its process group); a process already gone is fine."""
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
