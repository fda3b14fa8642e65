"""Parent side of a node process: start it with multiprocessing, signal it, reap it.

What runs in the child is the caller's: `start_node` takes its target, so this
module knows nothing of workers or supervisors beyond which pipes each needs, and
that a worker spawned with `child.worker_main` is started through its light
variant (`child.spawn_entry`: plain values, so the new interpreter imports little).
"""
from __future__ import annotations

import multiprocessing.context
import multiprocessing.process
import os
import time
from multiprocessing.connection import Connection
from signal import SIGKILL
from typing import Callable, List, Optional, Protocol, Tuple, Union

import attrs

from orchestrator.engine import child
from orchestrator.engine import osproc
from orchestrator.spec.model import NodeSpec, StartMethod, TreeContext


@attrs.frozen
class WorkerPipes:
    """A worker process's ends of its output pipes, for fds 1 and 2 (picklable under spawn)."""

    stdout: Connection
    stderr: Connection

    def fds(self) -> List[int]:
        return [self.stdout.fileno(), self.stderr.fileno()]

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()


# A node process's entry: (tree, node, its end of the pipes, the parent's pid).
SupervisorTarget = Callable[[TreeContext, NodeSpec, Connection, int], None]
WorkerTarget = Callable[[TreeContext, NodeSpec, WorkerPipes, int], None]
Target = Union[SupervisorTarget, WorkerTarget]
# The contexts a tree starts its processes with (TreeContext.start_method).
MpContext = Union[multiprocessing.context.ForkContext, multiprocessing.context.SpawnContext]


@attrs.define(eq=False)
class Running:
    """A started node process and the parent-side fds that belong to it."""

    process: multiprocessing.process.BaseProcess
    pid: int
    exit_fd: int  # readable once the process has exited
    owns_exit_fd: bool
    stdout_fd: Optional[int]  # read end of a worker's stdout pipe
    stderr_fd: Optional[int]  # read end of a worker's stderr pipe
    uplink: Optional[Connection]  # a supervisor child's event channel
    started_at: float = attrs.field(factory=time.time)  # wall clock, for display


def mp_context(method: StartMethod) -> MpContext:
    """multiprocessing's context for `method` (typed: get_context(a str) is any context)."""
    if method is StartMethod.SPAWN:
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def start_node(mp_context: MpContext, tree: TreeContext, node: NodeSpec, target: Target) -> Running:
    """Start `node` as a child of this process, running `target` there.

    A supervisor gets a duplex pipe to us, a worker a pipe for its stdout and one
    for its stderr. Raises OSError if it cannot be forked.
    """
    ours: Optional[Connection] = None
    theirs: Union[Connection, WorkerPipes]
    read_fds: List[int] = []
    if node.is_supervisor:
        ours, theirs = mp_context.Pipe(duplex=True)
    else:
        theirs = _worker_pipes(read_fds)
    entry: Callable[..., None] = target
    args: Tuple[object, ...] = (tree, node, theirs, os.getpid())
    if target is child.worker_main and isinstance(theirs, WorkerPipes) and tree.start_method is StartMethod.SPAWN:
        entry, args = child.spawn_entry(tree, node, theirs, os.getpid())
    process = mp_context.Process(target=entry, args=args, name=f"orch:{tree.name}/{node.path}")
    try:
        with osproc.signals_blocked():
            process.start()
    except BaseException:
        _close_quietly(ours, theirs, *read_fds)
        raise
    theirs.close()
    pid = process.pid
    assert pid is not None  # set by start()
    exit_fd, owns = osproc.open_exit_fd(pid, process.sentinel)
    if owns:
        # The pidfd watches the exit, so multiprocessing's sentinel pipe (two fds
        # per child) is dead weight; its finalizer closes it (join() never uses it).
        process._popen.finalizer()  # type: ignore[union-attr]  # private, not in typeshed
    # We reap it ourselves; left in this set, every later start() would poll all
    # N children (multiprocessing's _cleanup), making bring-up quadratic.
    multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]  # private, untyped
    for fd in read_fds:
        os.set_blocking(fd, False)
    stdout_fd, stderr_fd = read_fds if read_fds else (None, None)
    return Running(process, pid, exit_fd, owns, stdout_fd, stderr_fd, ours)


def _worker_pipes(read_fds: List[int]) -> WorkerPipes:
    """Two pipes (stdout, stderr); their read ends are appended to `read_fds`."""
    ends = []
    try:
        for _ in range(2):
            read_fd, write_fd = os.pipe()
            read_fds.append(read_fd)
            ends.append(Connection(write_fd, readable=False))
    except BaseException:
        _close_quietly(*ends, *read_fds)
        del read_fds[:]
        raise
    return WorkerPipes(ends[0], ends[1])


def reap(running: Running) -> int:
    """Collect the exit status of an exited process and release its fds.

    Returns multiprocessing's exit code: negative for death by signal.
    """
    running.process.join()
    code = running.process.exitcode
    if running.owns_exit_fd:
        os.close(running.exit_fd)
    if running.uplink is not None:
        running.uplink.close()
    running.process.close()
    return code if code is not None else -9


class Starter(Protocol):
    """How a supervisor starts, signals and reaps its node processes (a fake in unit tests)."""

    def start(self, node: NodeSpec, tree: TreeContext) -> Running: ...
    def reap(self, running: Running) -> int: ...
    def signal(self, running: Running, signum: int, group: bool = True) -> None: ...
    def kill_group(self, running: Running) -> None: ...


class ProcessStarter:
    """The real `Starter`: multiprocessing processes running `worker_target` or `supervisor_target`."""

    def __init__(self, mp_context: MpContext, worker_target: WorkerTarget, supervisor_target: SupervisorTarget) -> None:
        self._mp = mp_context
        self._worker_target = worker_target
        self._supervisor_target = supervisor_target

    def start(self, node: NodeSpec, tree: TreeContext) -> Running:
        target: Target = self._supervisor_target if node.is_supervisor else self._worker_target
        return start_node(self._mp, tree, node, target)

    reap = staticmethod(reap)

    @staticmethod
    def signal(running: Running, signum: int, group: bool = True) -> None:
        """Signal the node's process group (its helpers too), or the pid before it has one."""
        if group:
            osproc.signal_group_or_pid(running.pid, signum)
        else:
            osproc.send(running.pid, signum)

    @staticmethod
    def kill_group(running: Running) -> None:
        """SIGKILL an exited worker's process group: helpers it forked must not outlive it."""
        osproc.send(running.pid, SIGKILL, group=True)


def _close_quietly(*things: Union[Connection, WorkerPipes, int, None]) -> None:
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close() if hasattr(thing, "close") else os.close(thing)
        except OSError:
            pass


def tracker_pid() -> Optional[int]:
    from multiprocessing import resource_tracker

    return getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)


def release_helpers() -> None:
    """Stop and reap the resource tracker multiprocessing starts for spawn children.

    It is our child; left alone it would outlive us for a moment as an orphan.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
    if tracker is None or fd is None or pid is None:
        return
    try:
        os.close(fd)  # EOF tells the tracker to exit
        os.waitpid(pid, 0)
    except OSError:
        pass
    tracker._fd = tracker._pid = None
