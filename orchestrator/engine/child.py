"""Child side of a node process: the setup every node process redoes first, and the worker's entry.

A supervisor process's entry, `supervisor_main`, lives with the supervisor
(supervisor.py); it runs `prepare` too.

A forked worker runs `worker_main` with the parent's objects already in memory. A
spawned one is a fresh interpreter: it runs `spawned_worker_main` with a `WorkerBoot`
of plain values and imports only this module, the worker's own module and what
those need (no attrs, psutil, pluggy or plugin catalog: see bench/analysis.md). The
parent resolved the worker and hands over where its callable lives; the catalog is
scanned here only when that import fails.
"""
from __future__ import annotations

import faulthandler
import io
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Mapping, NoReturn, Optional, Tuple, Union, cast

from orchestrator.engine import osproc
from orchestrator.engine import titles

if TYPE_CHECKING:  # types only: a spawned worker must not import them
    from orchestrator.engine.spawn import WorkerPipes
    from orchestrator.hookspecs import WorkerFn
    from orchestrator.spec.catalog import WorkerRef
    from orchestrator.spec.model import NodeSpec, TreeContext

# Reserved exit code: the worker could not even be looked up in this process, so
# restarting it cannot help; its supervisor gives up at once (gunicorn's idea).
EXIT_BOOT_FAILED = 78
# notify.ADDRESS_ENV (a unit test keeps them equal): notify.py imports socket, which a
# spawned worker does not need.
NOTIFY_ADDRESS_ENV = "ORCH_NOTIFY_SOCKET"


def prepare(tree: Union[TreeContext, TreeBoot], node: Union[NodeSpec, WorkerBoot], parent_pid: int,
            keep_fds: Iterable[int], death_signal: int) -> None:
    """Make a freshly started process a node of its own: signals, parent death, group, fds, name."""
    # Under fork we inherit the parent's handlers and wakeup fd; a signal arriving
    # now must not wake the parent's loop. Signals stay blocked until this is done.
    osproc.reset_signals_after_start()
    # Before die_with_parent: the kernel clears the parent-death signal when the
    # process's user or group changes.
    apply_process_env(node)
    osproc.die_with_parent(parent_pid, death_signal)
    # Own process group: the terminal's Ctrl-C reaches only the root, which stops
    # the tree in order; and a worker's helpers can be signalled with the worker.
    os.setpgid(0, 0)
    # A forked child inherits every fd of its parent; a spawned one only those passed
    # (StartMethod values compared by name: a spawned worker does not import the model).
    if getattr(tree.start_method, "value", tree.start_method) == "fork":
        osproc.close_fds_except(keep_fds)
    osproc.set_process_name(f"orch {node.name}")
    titles.set_node_title(tree.name, node.path)


def apply_process_env(node: Union[NodeSpec, WorkerBoot]) -> None:
    """The node's environment, directory and user, resolved at validation (spec/environ.py).

    Applied by supervisors too, so what their children (and `orch.exec`) start inherits it.
    """
    if node.env:  # os.environ.update({}) still costs a forked child page faults: skip it
        os.environ.update(node.env)
    if node.cwd is not None:
        os.chdir(node.cwd)
    if node.uid is not None and node.gid is not None and (os.getuid(), os.getgid()) != (node.uid, node.gid):
        # Order matters: supplementary groups and gid need root, which setuid gives up.
        os.initgroups(node.user or str(node.uid), node.gid)
        os.setgid(node.gid)
        os.setuid(node.uid)


def worker_main(tree: TreeContext, node: NodeSpec, pipes: WorkerPipes, parent_pid: int) -> None:
    """Target of a forked worker process: returns, raises or exits as the worker does."""
    prepare(tree, node, parent_pid, pipes.fds(), signal.SIGKILL)
    _become_worker(node, pipes.stdout.fileno(), pipes.stderr.fileno())
    pipes.close()
    function = _resolve(tree.plugins, node.worker)
    function(**node.args)


# ----- spawn: plain values in, the worker's own module imported --------------------


class TreeBoot:
    """The tree as a spawned worker sees it (TreeContext's fields it reads, as plain values)."""

    start_method = "spawn"

    def __init__(self, name: str, plugins: Tuple[str, ...]) -> None:
        self.name, self.plugins = name, plugins


class WorkerBoot:
    """What a spawned worker process needs of its tree and node, as plain values.

    Pickled into the new interpreter by multiprocessing; its two fds (the write ends
    of the output pipes) travel as multiprocessing passes fds to a spawned child.
    `ref` is where the parent found the worker's callable (catalog.worker_ref).
    """

    def __init__(self, tree: TreeBoot, name: str, path: str, worker: str, args: Mapping[str, Any],
                 env: Mapping[str, str], cwd: Optional[str], user: Optional[str], uid: Optional[int],
                 gid: Optional[int], watchdog: float, ref: Optional[WorkerRef], stdout: int, stderr: int) -> None:
        self.tree, self.name, self.path, self.worker, self.args = tree, name, path, worker, args
        self.env, self.cwd, self.user, self.uid, self.gid = env, cwd, user, uid, gid
        self.watchdog, self.ref = watchdog, ref
        self.stdout, self.stderr = stdout, stderr

    @classmethod
    def of(cls, tree: TreeContext, node: NodeSpec, pipes: WorkerPipes, ref: Optional[WorkerRef]) -> "WorkerBoot":
        assert node.worker is not None
        return cls(TreeBoot(tree.name, tuple(tree.plugins)), node.name, node.path, node.worker, dict(node.args),
                   dict(node.env), node.cwd, node.user, node.uid, node.gid, node.watchdog, ref,
                   pipes.stdout.fileno(), pipes.stderr.fileno())

    def __reduce__(self) -> Tuple[Callable[..., "WorkerBoot"], Tuple[Any, ...]]:
        # Called while multiprocessing pickles the process for spawn: DupFd has the two fds
        # passed to the child, where each arrives as an object whose detach() is the fd.
        from multiprocessing.reduction import DupFd

        return _rebuild_boot, (self.tree, self.name, self.path, self.worker, self.args, self.env, self.cwd,
                               self.user, self.uid, self.gid, self.watchdog, self.ref,
                               DupFd(self.stdout), DupFd(self.stderr))


def _rebuild_boot(*values: Any) -> WorkerBoot:
    *rest, stdout, stderr = values
    return WorkerBoot(*rest, stdout.detach(), stderr.detach())  # type: ignore[call-arg]  # *rest: 12 values


def spawn_entry(tree: TreeContext, node: NodeSpec, pipes: WorkerPipes,
                parent_pid: int) -> Tuple[Callable[[WorkerBoot, int], None], Tuple[WorkerBoot, int]]:
    """The target and arguments a spawned worker is started with instead of `worker_main`'s."""
    from orchestrator.spec.catalog import worker_ref

    assert node.worker is not None
    return spawned_worker_main, (WorkerBoot.of(tree, node, pipes, worker_ref(tree.plugins, node.worker)),
                                 parent_pid)


def spawned_worker_main(boot: WorkerBoot, parent_pid: int) -> None:
    """Target of a spawned worker process: as `worker_main`, from a `WorkerBoot`."""
    prepare(boot.tree, boot, parent_pid, (), signal.SIGKILL)
    _become_worker(boot, boot.stdout, boot.stderr)
    os.close(boot.stdout)
    os.close(boot.stderr)
    _light_hookimpl()
    function = _import_ref(boot.ref) if boot.ref is not None else None
    if function is None:
        function = _resolve(boot.tree.plugins, boot.worker)
    function(**boot.args)


def _import_ref(ref: WorkerRef) -> Optional[WorkerFn]:
    """The worker's callable, imported from where the parent found it; None when that fails
    (the caller then loads the catalog, which reports why)."""
    module_name, qualname, file = ref
    try:
        module = sys.modules.get(module_name)
        if module is None:
            module = _import_file(module_name, file) if file else __import__(module_name, fromlist=["_"])
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part)
    except BaseException:  # noqa: B036 - plugin code, as catalog.run_plugin_code: the catalog's load says why
        return None
    return cast("WorkerFn", found) if callable(found) else None


def _import_file(name: str, path: str) -> Any:
    """A tree-file plugin, under the name the parent's catalog gave it (catalog._import_path)."""
    from orchestrator.spec.pyfile import import_file

    return import_file(name, path)


class LightHookimpl:
    """`orchestrator.hookimpl` in a spawned worker: marks a function exactly as pluggy's
    `HookimplMarker("orch")` does (tests/unit/test_catalog.py compares them), without
    importing pluggy, which only a catalog needs. Its module's `@hookimpl` runs at import."""

    project_name = "orch"

    def __call__(self, function: Optional[Callable[..., Any]] = None, hookwrapper: bool = False,
                 optionalhook: bool = False, tryfirst: bool = False, trylast: bool = False,
                 specname: Optional[str] = None, wrapper: bool = False) -> Any:
        def mark(func: Callable[..., Any]) -> Callable[..., Any]:
            opts: Dict[str, Any] = {"wrapper": wrapper, "hookwrapper": hookwrapper, "optionalhook": optionalhook,
                                    "tryfirst": tryfirst, "trylast": trylast, "specname": specname}
            setattr(func, self.project_name + "_impl", opts)
            return func

        return mark if function is None else mark(function)


def _light_hookimpl() -> None:
    """Give `from orchestrator import hookimpl` the light marker, unless pluggy's is there already."""
    import orchestrator

    if "hookimpl" not in vars(orchestrator):
        setattr(orchestrator, "hookimpl", LightHookimpl())


# ----- both ------------------------------------------------------------------------


def _become_worker(node: Union[NodeSpec, WorkerBoot], stdout: int, stderr: int) -> None:
    """Output to our pipes, default SIGTTOU, faulthandler, NOTIFY_SOCKET, signals unblocked."""
    # The root ignores it for its own sake (see guardian.py); a worker, and what it
    # execs, gets the default back.
    osproc.C_SIGNAL.signal(int(signal.SIGTTOU), osproc.C_SIGNAL.SIG_DFL)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    # Text files over fds 1 and 2 (typeshed says TextIO, which lacks reconfigure). Under
    # spawn Python made them at start-up for what fds 1 and 2 were then (block-buffered
    # when not a terminal): each `print` must reach the pipe at once, under fork or spawn.
    for stream in (sys.stdout, sys.stderr):
        cast(io.TextIOWrapper, stream).reconfigure(line_buffering=True)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    _notify_environment(node.watchdog)
    osproc.unblock_handled_signals()


def _notify_environment(watchdog: float) -> None:
    """NOTIFY_SOCKET (and WATCHDOG_USEC/WATCHDOG_PID) pointing at our supervisor, as systemd sets them.

    What the process inherited (systemd's own NOTIFY_SOCKET for orch, say) is replaced:
    a worker notifies its supervisor, never the service manager above the tree.
    """
    address = os.environ.get(NOTIFY_ADDRESS_ENV)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(key, None)
    if address:
        os.environ["NOTIFY_SOCKET"] = address
        if watchdog > 0:
            os.environ["WATCHDOG_USEC"] = str(int(watchdog * 1_000_000))
            os.environ["WATCHDOG_PID"] = str(os.getpid())


def _resolve(plugins: Iterable[str], worker: Optional[str]) -> WorkerFn:
    """The worker's callable from the plugin catalog (a forked child inherits it loaded)."""
    from orchestrator.spec.catalog import PluginError, load_catalog

    assert worker is not None  # only a worker's process runs this
    try:
        entry = load_catalog(tuple(plugins)).workers.get(worker)
    except PluginError as error:
        _boot_failed(f"plugins failed to load in the worker process: {error}")
    if entry is None:
        _boot_failed(f"worker {worker!r} is not provided by any plugin in this process")
    return entry.function


def _boot_failed(message: str) -> NoReturn:
    print(f"orch: cannot boot: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BOOT_FAILED)
