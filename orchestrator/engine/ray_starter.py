"""The `Starter` of a supervisor whose node has backend = "ray": its workers run as Ray actors.

The supervisor decides, this executes, as `spawn.ProcessStarter` does for
processes. Imported only by the Ray supervisor's own process, after it was
forked, and it never forks: Ray is imported here and nowhere else that forks.

What the supervisor's loop watches is local pipes, so nothing polls:
- exit: the read end of a pipe; the done-callback of the actor's `run` call
  (run by a Ray thread) writes one byte to it; `reap` takes the exit code from
  the call's result (a dead actor or a lost node: -9, like a SIGKILL);
- output: the read ends of two pipes (stdout, stderr), fed by a chain of
  `next_output` calls, each issued by the done-callback of the previous one, so
  relay.py logs a Ray worker's lines exactly as a local worker's.
"""
from __future__ import annotations

import logging
import os
import sys
import signal
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, cast

import attrs
import ray
import ray.cloudpickle
import ray.exceptions

from orchestrator.engine import ray_actor
from orchestrator.engine.messages import NodeEvent, UpMessage
from orchestrator.engine.spawn import Running
from orchestrator.engine.uplink import Uplink
from orchestrator.spec.model import NodeSpec, TreeContext
from orchestrator.spec.ray_keys import DEFAULT_START_TIMEOUT

# Reaped: the last output of the worker is awaited at most this long before its actor is killed.
DRAIN_TIMEOUT = 2.0
REAP_TIMEOUT = 5.0  # the run call is done when reap is called: this only bounds a Ray hiccup
# ray_options keys passed to .options() as they are (ray_keys.OPTIONS checked them).
_PASSED = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "scheduling_strategy",
           "runtime_env")

if TYPE_CHECKING:  # a type only: supervisor.py imports this module
    from orchestrator.engine.supervisor import Supervisor


@attrs.define(eq=False)
class RayRunning(Running):
    """A started Ray worker: its actor, its `run` call, where it runs, and the write ends of its pipes."""

    actor: Any = None
    run_ref: Any = None
    host: str = ""
    node_id: str = ""
    actor_id: str = ""
    exit_write_fd: int = -1
    output_fds: List[int] = attrs.Factory(list)  # write ends (stdout, stderr), closed at the end of output
    lock: threading.Lock = attrs.Factory(threading.Lock)
    drained: bool = False  # its output chain has ended
    drained_event: threading.Event = attrs.Factory(threading.Event)
    killed: bool = False


def connect(settings: Mapping[str, Any]) -> None:
    """Connect this process to its cluster (or start the instance it owns: address "local")."""
    options: Dict[str, Any] = {
        "address": settings.get("address", "auto"),
        "namespace": settings.get("namespace"),
        "runtime_env": settings.get("runtime_env"),
        "log_to_driver": False,  # workers' output travels through our pipes, per node
        "logging_level": logging.WARNING,
    }
    if "node_ip_address" in settings:
        options["_node_ip_address"] = settings["node_ip_address"]
    if options["address"] == "local":
        options.update(include_dashboard=False, num_cpus=settings.get("num_cpus"))
    ray.init(**options)


class RayStarter:
    """Starts each worker as a fresh, non-detached actor owned by this process's driver:
    if this process dies, Ray kills them all."""

    def __init__(self, node: NodeSpec) -> None:
        connect(node.ray)
        # Shipped by value: a node needs Ray and the worker's module, not orch.
        ray.cloudpickle.register_pickle_by_value(ray_actor)
        self._actor_class = ray.remote(ray_actor.WorkerActor)
        self._timeout = float(node.ray.get("start_timeout", DEFAULT_START_TIMEOUT))
        self._workers: Dict[Tuple[Tuple[str, ...], str], Tuple[Optional[bytes], Optional[str]]] = {}
        self._live: Dict[str, RayRunning] = {}  # by node path: the worker's current actor
        self._lock = threading.Lock()

    # ----- the Starter protocol -------------------------------------------

    def start(self, node: NodeSpec, tree: TreeContext) -> Running:
        """Create the worker's actor and start its run; raises OSError if no node takes it in time."""
        blob, error = self._worker(node, tree)
        actor = self._actor_class.options(**actor_options(node.ray_options)).remote()
        run_ref = actor.run.remote(blob, dict(node.args), dict(node.env), error)
        try:
            info = ray.get(actor.info.remote(), timeout=self._timeout)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor, no_restart=True)
            raise OSError(f"no Ray node took the actor within {self._timeout:g}s "
                          f"(ray_options {dict(node.ray_options)})") from None
        except ray.exceptions.RayError as failure:
            ray.kill(actor, no_restart=True)
            raise OSError(f"Ray could not start the actor: {failure}") from None
        running = self._running(actor, run_ref, info)
        with self._lock:
            self._live[node.path] = running
        run_ref.future().add_done_callback(lambda _: ray_actor.write_all(running.exit_write_fd, b"x"))
        self._poll(running)
        return running

    def reap(self, running: Running) -> int:
        """The worker's exit code: its own, -signal for a signal it got, -9 for a dead actor or lost node."""
        ray_running = cast(RayRunning, running)
        try:
            code = int(ray.get(ray_running.run_ref, timeout=REAP_TIMEOUT))
        except ray.exceptions.RayTaskError:
            code = 1  # run itself failed (it catches what the worker raises)
        except ray.exceptions.RayError:
            code = -signal.SIGKILL  # the actor's process died, or its node was lost
        os.close(ray_running.exit_fd)
        os.close(ray_running.exit_write_fd)
        return code

    def signal(self, running: Running, signum: int, group: bool = True) -> None:
        """SIGKILL kills the actor; any other signal is delivered to the worker as a local one gets it."""
        ray_running = cast(RayRunning, running)
        if signum == signal.SIGKILL:
            self._kill(ray_running)
        elif not ray_running.killed:
            ray_running.actor.deliver.remote(signum)

    def kill_group(self, running: Running) -> None:
        """The worker has exited: its actor goes, once what it printed has been passed on.

        Its `run` wrote the end of its output before it returned, so the last
        `next_output` answer is on its way: waited for here, briefly (Ray's own
        threads must never call into Ray: a `ray.kill` from a callback can hang them).
        """
        ray_running = cast(RayRunning, running)
        ray_running.drained_event.wait(DRAIN_TIMEOUT)
        self._kill(ray_running)

    # ----- for orch tree, and the end ---------------------------------------

    def placement(self, path: str, pid: Optional[int]) -> Dict[str, Any]:
        """Where the worker at `path` (pid `pid`) runs, for its NodeEvent."""
        with self._lock:
            running = self._live.get(path)
        if running is None or running.pid != pid:
            return {"backend": "ray"}
        return {"backend": "ray", "host": running.host, "node_id": running.node_id, "actor_id": running.actor_id}

    def close(self) -> None:
        """The supervisor exits: no actor of ours stays on the cluster, then disconnect."""
        with self._lock:
            left = list(self._live.values())
        for running in left:
            self._kill(running)
        ray.shutdown()

    # ----- inside ------------------------------------------------------------

    def _worker(self, node: NodeSpec, tree: TreeContext) -> Tuple[Optional[bytes], Optional[str]]:
        """The worker callable pickled for the actor, or why there is none (the actor exits 78)."""
        from orchestrator.spec.catalog import PluginError, load_catalog

        assert node.worker is not None
        key = (tree.plugins, node.worker)
        if key not in self._workers:
            try:
                entry = load_catalog(tree.plugins).workers.get(node.worker)
            except PluginError as error:
                self._workers[key] = (None, f"plugins failed to load in the Ray supervisor: {error}")
            else:
                self._workers[key] = ((_pickled(entry.function, tree.plugins), None) if entry is not None else
                                      (None, f"worker {node.worker!r} is not provided by any plugin"))
        return self._workers[key]

    @staticmethod
    def _running(actor: Any, run_ref: Any, info: Mapping[str, Any]) -> RayRunning:
        fds = [fd for _ in range(3) for fd in os.pipe()]
        exit_read, exit_write, out_read, out_write, err_read, err_write = fds
        for fd in (exit_read, out_read, err_read):
            os.set_blocking(fd, False)
        return RayRunning(
            process=cast(Any, None), pid=int(info["pid"]), exit_fd=exit_read, owns_exit_fd=True,
            stdout_fd=out_read, stderr_fd=err_read, uplink=None, actor=actor, run_ref=run_ref,
            host=str(info["host"]), node_id=str(info["node_id"]), actor_id=str(info["actor_id"]),
            exit_write_fd=exit_write, output_fds=[out_write, err_write])

    def _poll(self, running: RayRunning) -> None:
        """Ask the actor for its next output; the answer's callback writes it and asks again."""
        try:
            ref = running.actor.next_output.remote()
        except Exception:  # disconnected: shutting down
            self._output_ended(running)
            return
        ref.future().add_done_callback(lambda future: self._on_output(running, future))

    def _on_output(self, running: RayRunning, future: Any) -> None:
        try:
            out, err, ended = future.result()
        except BaseException:  # the actor is gone: so is the rest of its output
            out, err, ended = b"", b"", True
        with running.lock:
            if not running.drained:
                for fd, data in zip(running.output_fds, (out, err)):
                    ray_actor.write_all(fd, data)
        if ended or running.killed:
            self._output_ended(running)
        else:
            self._poll(running)

    def _output_ended(self, running: RayRunning) -> None:
        with running.lock:
            if running.drained:
                return
            running.drained = True
            for fd in running.output_fds:
                os.close(fd)  # EOF for the relay
        running.drained_event.set()

    def _kill(self, running: RayRunning) -> None:
        with running.lock:
            if running.killed:
                return
            running.killed = True
        with self._lock:
            for path, live in list(self._live.items()):
                if live is running:
                    del self._live[path]
        try:
            ray.kill(running.actor, no_restart=True)
        except Exception:  # already gone, or we are disconnected: nothing left to kill
            pass


def actor_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """`.options()` of a worker's actor: its ray_options, and what orch needs of every actor."""
    chosen = {key: value for key, value in options.items() if key in _PASSED}
    # Ray never restarts it, and never retries its run: orch does (a restart is a new actor).
    chosen.update(max_restarts=0, max_task_retries=0, max_concurrency=ray_actor.MAX_CONCURRENCY)
    return chosen


class RayUplink:
    """The Ray supervisor's uplink: its children's NodeEvents carry where their actor runs."""

    def __init__(self, inner: Uplink, starter: RayStarter) -> None:
        self._inner = inner
        self._starter = starter

    def attach(self, supervisor: "Supervisor") -> None:
        self._inner.attach(supervisor)

    def send(self, message: UpMessage) -> None:
        if isinstance(message, NodeEvent):
            message = attrs.evolve(message, **self._starter.placement(message.path, message.pid))
        self._inner.send(message)


def _pickled(function: Any, plugins: Tuple[str, ...]) -> bytes:
    """The worker for its actor: by reference to its module (the nodes import it by
    name), or by value if it came from a plugin file (loaded under a name of orch's)."""
    module = sys.modules.get(getattr(function, "__module__", ""))
    files = {os.path.abspath(ref) for ref in plugins if ref.endswith(".py")}
    if module is not None and os.path.abspath(getattr(module, "__file__", None) or "-") in files:
        ray.cloudpickle.register_pickle_by_value(module)
    return cast(bytes, ray.cloudpickle.dumps(function))

