"""Child side of a node process: the setup every node process redoes first, and the worker's entry.

A supervisor process's entry, `supervisor_main`, lives with the supervisor
(supervisor.py); it runs `prepare` too.
"""
from __future__ import annotations

import faulthandler
import io
import os
import signal
import sys
from typing import Iterable, NoReturn, cast

from orchestrator.engine import osproc
from orchestrator.engine import titles
from orchestrator.engine.spawn import WorkerPipes
from orchestrator.hookspecs import WorkerFn
from orchestrator.spec.model import NodeSpec, StartMethod, TreeContext

# Reserved exit code: the worker could not even be looked up in this process, so
# restarting it cannot help; its supervisor gives up at once (gunicorn's idea).
EXIT_BOOT_FAILED = 78


def prepare(tree: TreeContext, node: NodeSpec, parent_pid: int, keep_fds: Iterable[int],
            death_signal: int) -> None:
    """Make a freshly started process a node of its own: signals, parent death, group, fds, name."""
    # Under fork we inherit the parent's handlers and wakeup fd; a signal arriving
    # now must not wake the parent's loop. Signals stay blocked until this is done.
    signal.set_wakeup_fd(-1)
    for signum in osproc.BLOCKED_AROUND_FORK:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Before die_with_parent: the kernel clears the parent-death signal when the
    # process's user or group changes.
    apply_process_env(node)
    osproc.die_with_parent(parent_pid, death_signal)
    # Own process group: the terminal's Ctrl-C reaches only the root, which stops
    # the tree in order; and a worker's helpers can be signalled with the worker.
    os.setpgid(0, 0)
    if tree.start_method is StartMethod.FORK:
        osproc.close_fds_except(keep_fds)
    osproc.set_process_name(f"orch {node.name}")
    titles.set_node_title(tree.name, node.path)


def apply_process_env(node: NodeSpec) -> None:
    """The node's environment, directory and user, resolved at validation (spec/environ.py).

    Applied by supervisors too, so what their children (and `orch.exec`) start inherits it.
    """
    os.environ.update(node.env)
    if node.cwd is not None:
        os.chdir(node.cwd)
    if node.uid is not None and node.gid is not None and (os.getuid(), os.getgid()) != (node.uid, node.gid):
        # Order matters: supplementary groups and gid need root, which setuid gives up.
        os.initgroups(node.user or str(node.uid), node.gid)
        os.setgid(node.gid)
        os.setuid(node.uid)


def worker_main(tree: TreeContext, node: NodeSpec, pipes: WorkerPipes, parent_pid: int) -> None:
    """Target of a worker process: returns, raises or exits as the worker does."""
    prepare(tree, node, parent_pid, pipes.fds(), signal.SIGKILL)
    # The root ignores it for its own sake (see guardian.py); a worker, and what it
    # execs, gets the default back.
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.dup2(pipes.stdout.fileno(), 1)
    os.dup2(pipes.stderr.fileno(), 2)
    pipes.close()
    # Text files over fds 1 and 2 (typeshed says TextIO, which lacks reconfigure). Under
    # spawn Python made them at start-up for what fds 1 and 2 were then (block-buffered
    # when not a terminal): each `print` must reach the pipe at once, under fork or spawn.
    for stream in (sys.stdout, sys.stderr):
        cast(io.TextIOWrapper, stream).reconfigure(line_buffering=True)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    _notify_environment(node)
    osproc.unblock_handled_signals()
    function = _resolve(tree, node)
    function(**node.args)


def _notify_environment(node: NodeSpec) -> None:
    """NOTIFY_SOCKET (and WATCHDOG_USEC/WATCHDOG_PID) pointing at our supervisor, as systemd sets them.

    What the process inherited (systemd's own NOTIFY_SOCKET for orch, say) is replaced:
    a worker notifies its supervisor, never the service manager above the tree.
    """
    from orchestrator.engine.notify import ADDRESS_ENV

    address = os.environ.get(ADDRESS_ENV)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(key, None)
    if address:
        os.environ["NOTIFY_SOCKET"] = address
        if node.watchdog > 0:
            os.environ["WATCHDOG_USEC"] = str(int(node.watchdog * 1_000_000))
            os.environ["WATCHDOG_PID"] = str(os.getpid())


def _resolve(tree: TreeContext, node: NodeSpec) -> WorkerFn:
    from orchestrator.spec.catalog import PluginError, load_catalog

    assert node.worker is not None  # only a worker's process runs worker_main
    try:
        entry = load_catalog(tree.plugins).workers.get(node.worker)
    except PluginError as error:
        _boot_failed(f"plugins failed to load in the worker process: {error}")
    if entry is None:
        _boot_failed(f"worker {node.worker!r} is not provided by any plugin in this process")
    return entry.function


def _boot_failed(message: str) -> NoReturn:
    print(f"orch: cannot boot: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BOOT_FAILED)
