"""The guardian: a minimal process above the root whose one job is that no process of the tree outlives it.

`orch up` forks once the tree file is valid: the child becomes the root, the
parent this guardian. The guardian is a child subreaper that only waits for
signals. The root runs in a process group of its own, so every stop and reload
signal reaches it once, through us: the terminal's Ctrl-C (we are the foreground
job), a `kill` of our pid, or a signal to our whole process group (systemd's
control-group stop, a shell's SIGHUP to its jobs). When the root exits, however it exits, it SIGKILLs and reaps all
that is left below (helpers that left their worker's session included) before it
exits with the root's code. The root gets SIGTERM when the guardian dies, reads
it as "my parent is gone", kills its subtree and sweeps below itself the same way.

As PID 1 of a container's PID namespace the guardian is its init, and this is
enough: the stop signals are blocked and taken with sigwaitinfo, which works where
PID 1's default actions do not (a signal without a handler would be dropped), and
every SIGCHLD reaps all exited children with waitpid(-1), so an orphan reparented
to PID 1 from outside the root's subtree (the root is the tree's own subreaper) is
reaped while the root lives, not left a zombie. (systemd's notifications are the
root's: root/systemd.py.)
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Optional

from orchestrator.engine import osproc
from orchestrator.engine import sweep
from orchestrator.engine import titles
from orchestrator.errors import EXIT_FAILURE, RuntimeFailure
from orchestrator.engine.output import log

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
WATCHED = FORWARDED + (signal.SIGCHLD,)
# The root tells this from a forwarded SIGTERM by its parent pid having changed.
ROOT_DEATH_SIGNAL = signal.SIGTERM


def fork_root(tree: str) -> int:
    """Fork the root. Returns, in the child (the root), the guardian's pid; the
    parent becomes the guardian and never returns.

    The signals the root's loop handles stay blocked in the root until its loop
    unblocks them, so a stop request that comes early waits for it.
    """
    osproc.become_subreaper()  # before the fork: no orphan of the root can slip past us
    sys.stdout.flush()  # or both processes would write what is buffered
    sys.stderr.flush()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED + osproc.BLOCKED_AROUND_FORK)
    guardian = os.getpid()
    try:
        root = os.fork()
    except OSError as error:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise RuntimeFailure(f"cannot start the root process: {error}") from None
    if root == 0:
        osproc.die_with_parent(guardian, ROOT_DEATH_SIGNAL)
        # Out of our process group: a signal to the group, or from the terminal, must
        # reach the root once (forwarded by us), never twice (a second Ctrl-C kills).
        os.setpgid(0, 0)
        # A background group writing to a terminal with `stty tostop` would be stopped:
        # the root and its supervisors relay output there and must never stop.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set(old) | set(osproc.BLOCKED_AROUND_FORK))
        return guardian
    os._exit(guard(tree, root))


def guard(tree: str, root: int) -> int:
    """The guardian's whole life: wait for the root, sweep, return the root's exit code."""
    # Only stdio: an `orch up --detach` waiting on the root's ready fd must see EOF
    # if the root dies, and nothing else of the CLI's is ours to hold.
    osproc.close_fds_except(())
    # Nothing that exists now is ever collected: no finalizer of an object whose fd
    # was just closed can close an fd this process opens later (and no page is copied).
    gc.freeze()
    titles.set_guardian_title(tree)
    status = _wait_for_root(root)
    sweep.kill_descendants()
    return _exit_code(tree, root, status)


def _wait_for_root(root: int) -> int:
    """Pass on signals sent by other processes until the root exits; its wait status."""
    while True:
        info = signal.sigwaitinfo(WATCHED)
        if info.si_signo == signal.SIGCHLD:
            status = _reap_children(root)
            if status is not None:
                return status
        else:
            osproc.send(root, info.si_signo)  # not reaped yet, so the pid is still the root's


def _reap_children(root: int) -> Optional[int]:
    """Reap every child that has exited; the root's wait status if it was one of them.

    waitpid(-1) is safe here: no library in this process has children of its own.
    """
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == root:
            found = status


def _exit_code(tree: str, root: int, status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return code
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    log(f"the root of tree {tree!r} (pid {root}) was killed by {name}; killed what was left of the tree")
    return EXIT_FAILURE
