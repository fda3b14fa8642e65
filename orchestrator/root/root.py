"""The root process (`orch up` forks it below its guardian): the root supervisor plus the state table and the control server."""
from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import AbstractSet, Callable, Dict, List, Optional, Set, Tuple, Union

import attrs

from orchestrator.root import livetree
from orchestrator.root import settle
from orchestrator.root import systemd
from orchestrator.engine import osproc
from orchestrator.spec import source
from orchestrator.engine import spawn
from orchestrator.engine import sweep
from orchestrator.engine import titles
from orchestrator.root import view
from orchestrator.root.control import RunDir
from orchestrator.root.ctlserver import ControlServer, Deferred
from orchestrator.errors import EXIT_FAILURE, InvalidInput, Problem
from orchestrator.engine.loop import Loop
from orchestrator.engine.notify import DIR_ENV as NOTIFY_DIR_ENV
from orchestrator.engine.messages import (Applied, ApplyCommand, GaveUp, LogLine, NodeEvent, Notice, Ready,
                                          RestartCommand, UpMessage)
from orchestrator.engine import output
from orchestrator.engine.output import log
from orchestrator.root.eventlog import EventLog
from orchestrator.engine.states import LIVE, NodeState
from orchestrator.policy.plan import plan_tree
from orchestrator.root.orphans import OrphanRepair
from orchestrator.root.table import NOT_STARTED, NodeRecord
from orchestrator.spec.model import TreeContext, TreeSpec
from orchestrator.engine.supervisor import Supervisor
from orchestrator.spec.validate import load_tree

COMMANDS = ("ping", "tree", "wait", "down", "diff", "reload", "restart", "stop", "start")
NODE_COMMANDS = ("restart", "stop", "start")


def notify(ready_fd: Optional[int], line: str) -> None:
    """Tell a waiting `orch up --detach` how start-up ended (once; then the fd is closed)."""
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, line.encode() + b"\n")
        os.close(ready_fd)
    except OSError:
        pass


class Root:
    """Runs the tree's root supervisor in this process and answers the control socket."""

    def __init__(self, tree: TreeSpec, ready_fd: Optional[int] = None,
                 guardian_pid: Optional[int] = None, notifier: Optional[systemd.Notifier] = None) -> None:
        self.tree = tree
        self.table: Dict[str, NodeRecord] = {}  # by node path; the root itself is not in it
        self.started_at = time.time()
        self.loop = Loop()
        # The guardian (orchestrator/guardian.py) is our parent: a SIGTERM once it is
        # gone is its death signal, and the supervisor then kills the subtree at once.
        self.guardian_pid = guardian_pid
        self.supervisor = Supervisor(TreeContext.of(tree), tree.root, self, self.loop, guardian_pid)
        self.run_dir = RunDir(tree.name)
        self._ready_fd = ready_fd
        self._server: Optional[ControlServer] = None
        self.orphans = OrphanRepair(self.loop, tree.name, self._known_children, self._node_pids)
        self.file = os.path.abspath(tree.file)  # SIGHUP re-reads it, whatever our cwd becomes
        self.held: frozenset[str] = frozenset()  # paths kept stopped by `orch stop`
        self._effective: Optional[Tuple[TreeSpec, frozenset[str], TreeSpec]] = None
        self._supervisor_paths = {node.path for node in tree.nodes() if node.is_supervisor}
        self.generation = 0  # of the last spec handed down; `applied` once all of it is done
        self.applied_generation = 0
        self.supervisor.on_hangup = self._reload_from_file
        self.cpu_meter = livetree.CpuMeter()  # `cpu` in `orch tree`: percent since the last `tree`
        self.waits = settle.Waits(self.loop, self.rows)  # deferred replies, answered once settled
        # Requests answered, by command (others under "other": clients choose no keys), for `ping`.
        self.requests: Counter[str] = Counter()
        # systemd's notify socket, when `orch up` runs as a Type=notify service (root/systemd.py).
        self.notifier = notifier
        self._reload_settling: Optional[Deferred] = None  # READY=1 once the reload has settled
        self.supervisor.on_stop = self._stopping
        self.events = EventLog(self.loop, tree.name, tree.log, _event_hooks(tree))
        self.orphans.on_adopt = lambda pid: self.events.emit("", "orphan_stopped", pid=pid)

    def _known_children(self) -> AbstractSet[int]:
        """Our own children: node processes and multiprocessing's resource tracker."""
        tracker = spawn.tracker_pid()
        return self.supervisor.child_pids() | {pid for pid in (tracker, self.events.hooks.pid) if pid}

    def _node_pids(self) -> Set[int]:
        """Pids of our running nodes on this machine (a Ray worker's pid is its host's)."""
        return {entry.pid for entry in self.table.values() if entry.pid is not None and entry.backend != "ray"}

    def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 when the tree gave up."""
        self.run_dir.acquire()
        # Every supervisor of the tree binds its sd_notify socket here (inherited, fork or spawn).
        os.environ[NOTIFY_DIR_ENV] = str(self.run_dir.path)
        titles.set_node_title(self.tree.name, "")
        try:
            self.events.open()
            self.events.emit("", "started", pid=os.getpid())
            # orch.log has one writer, us: the supervisors below send their messages here.
            output.forward_log(lambda text: self.events.orch_line("", os.getpid(), text))
            self._server = ControlServer(self.loop, self.run_dir.socket_path, self.handle)
            self.orphans.start()
            self._watchdog()
            code = self.supervisor.run()
        finally:
            self.orphans.finish()
            if self._server is not None:
                self._server.close()
            self.run_dir.release()
            self.events.emit("", "stopped", pid=os.getpid())
            self.events.close()  # the hooks get a moment for the last events, then are stopped
            self.loop.close()
            spawn.release_helpers()
            self._sweep()  # last: every node and helper multiprocessing started is reaped
        if self.supervisor.gave_up:
            self.events.orch_line("", os.getpid(), f"tree {self.tree.name!r} gave up: {self.supervisor.gave_up}")
            log(f"tree {self.tree.name!r} gave up: {self.supervisor.gave_up}")
            notify(self._ready_fd, f"failed {self.supervisor.gave_up}")
            return EXIT_FAILURE
        notify(self._ready_fd, "failed the tree was stopped before it was up")
        return code

    def _sweep(self) -> None:
        """Leave nothing below us: a helper orphaned during the stop (one that left its
        worker's session, say) is our child now, maybe not yet adopted, and would
        otherwise outlive us under pid 1 (or under the guardian, until its sweep)."""
        killed = sweep.kill_descendants()
        if killed:
            log(f"killed {len(killed)} process{'es' if len(killed) != 1 else ''} left below the root: "
                f"{', '.join(map(str, sorted(killed)))}")

    def _down_pids(self) -> List[int]:
        """What `orch down` waits for: us, all below us, and the guardian, which exits last."""
        pids = set(livetree.snapshot(os.getpid()))
        if self.guardian_pid is not None:
            pids.add(self.guardian_pid)
        return sorted(pids)

    # ----- Uplink: events from the root supervisor and forwarded from below -----

    def attach(self, supervisor: Supervisor) -> None:
        pass  # commands reach the root supervisor as calls, not over a pipe

    def send(self, message: UpMessage) -> None:
        if isinstance(message, NodeEvent):
            previous = self.table.get(message.path)
            self._record(message)
            # A `stopped` node has no pid any more: its event names the one that stopped.
            self.events.node_event(message, previous.pid if previous is not None else None)
        elif isinstance(message, Ready):
            self._ready(message.path)
        elif isinstance(message, Applied):
            self._applied(message.path, message.generation)
        elif isinstance(message, Notice):
            self.events.notice(message)
        elif isinstance(message, LogLine):
            self.events.orch_line(message.path, message.pid, message.text)
        elif isinstance(message, GaveUp):
            # The root's own give-up is also read from the supervisor when run() returns;
            # one from below reaches its parent, which reports what it does about it.
            self.events.gave_up(message)

    def _record(self, event: NodeEvent) -> None:
        self.table[event.path] = NodeRecord.of(event)
        if event.state not in LIVE and event.path in self._supervisor_paths:
            self._forget_subtree(event.path)
        self.waits.changed()

    def _forget_subtree(self, path: str) -> None:
        """A supervisor that is gone took its subtree with it (parent-death signals).

        A worker killed that way leaves any helper it forked orphaned, and its
        supervisor is gone too: SIGKILL each worker's process group from here.
        """
        prefix = path + "/"
        for other, entry in self.table.items():
            if other.startswith(prefix) and entry.pid is not None:
                osproc.send(entry.pid, signal.SIGKILL, group=True)
                # Replacing a value while iterating is fine: the keys stay the same.
                self.table[other] = attrs.evolve(entry, pid=None, state=NodeState.STOPPED, started_at=None,
                                                 ready=False, status=None)

    def _ready(self, path: str) -> None:
        if path:
            return  # a supervisor below: its parent waits for it, not us
        count = sum(1 for entry in self.table.values() if entry.pid) + 1
        log(f"tree {self.tree.name!r} is up: {count} processes, root pid {os.getpid()} "
            f"(`orch tree {self.tree.name}` to look, Ctrl-C or `orch down {self.tree.name}` to stop)")
        notify(self._ready_fd, f"ready {os.getpid()}")
        self._ready_fd = None
        self.events.emit("", "ready", pid=os.getpid())
        if self.notifier is not None:
            self.notifier.ready()

    def _applied(self, path: str, generation: int) -> None:
        if not path:
            self.applied_generation = max(self.applied_generation, generation)
            self.waits.changed()

    # ----- control requests -----------------------------------------------

    def handle(self, request: dict) -> Union[dict, Deferred]:
        command = request["cmd"]
        self.requests[command if command in COMMANDS else "other"] += 1
        reply = self._dispatch(command, request)
        if command == "reload" or command in NODE_COMMANDS:
            self.waits.changed()  # a new hold ends the waits of restarts and starts below it
        return reply

    def _dispatch(self, command: str, request: dict) -> Union[dict, Deferred]:
        if command == "ping":
            return {"ok": True, "tree": self.tree.name, "pid": os.getpid(), "file": self.tree.file,
                    "stop_budget": self.tree.root.stop_budget(), "generation": self.generation,
                    "applied": self.applied_generation,
                    "refused": self._server.stats() if self._server else {},
                    "requests": dict(self.requests), "waiting": len(self.waits),
                    # sd_notify datagrams to the root's socket from a pid none of its workers own
                    "notify_ignored": self.supervisor.notify_ignored,
                    "log_dir": self.events.dir}
        if command == "tree":
            return {"ok": True, "tree": self.tree.name, "file": self.tree.file, "nodes": self.rows(sample=True)}
        if command == "wait":
            return self.waits.add(settle.SettleWait(self, settle.wait_timeout(self, request)))
        if command == "down":
            pids = self._down_pids()
            already = self.supervisor.stopping
            self.loop.call_later(0, lambda: self._down(kill=request.get("kill") is True))
            return {"ok": True, "pid": os.getpid(), "pids": pids, "already_stopping": already,
                    "stop_budget": self.tree.root.stop_budget()}
        if command in ("diff", "reload"):
            reply = self._diff_or_reload(request, apply=command == "reload")
            return self._reload_wait(request, reply) if command == "reload" and _waits(request) else reply
        if command in NODE_COMMANDS:
            reply = self._node_command(command, request.get("path"))
            return self._node_wait(request, reply) if _waits(request) else reply
        return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(COMMANDS)}"}

    def _down(self, kill: bool) -> None:
        """Start the orderly stop; a second `down` waits for it rather than escalating.
        Only `kill` (`orch down --kill`) SIGKILLs what is left, as a second Ctrl-C does."""
        if not self.supervisor.stopping:
            self.supervisor.shutdown()
        if kill:
            self.supervisor.shutdown()  # while stopping, shutdown() forces

    # ----- declarative apply ----------------------------------------------

    def _diff_or_reload(self, request: dict, apply: bool) -> dict:
        try:
            new = self._requested_tree(request)
        except InvalidInput as error:
            return {"ok": False, "error": "the tree file is invalid; nothing was changed",
                    "problems": [problem._asdict() for problem in error.problems]}
        except ValueError as error:
            return {"ok": False, "error": str(error)}
        if new.name != self.tree.name:
            return {"ok": False, "error": f"{request.get('shown') or new.file} describes tree {new.name!r}, "
                                          f"but this is tree {self.tree.name!r}; nothing was changed"}
        changes, unchanged = plan_tree(self.tree.root, new.root)
        reply = {"ok": True, "tree": new.name, "unchanged": unchanged,
                 "changes": [{"op": c.op, "path": c.path, "keys": list(c.keys)} for c in changes]}
        if apply:
            self._apply(new)
            reply["generation"] = self.generation
            for change in changes:
                keys = f" ({', '.join(change.keys)})" if change.keys else ""
                self.events.emit(change.path, "reloaded", reason=f"{change.op}{keys}")
        return reply

    def _requested_tree(self, request: dict) -> TreeSpec:
        """The tree a diff or reload asks for; ValueError for a malformed request.

        A client sends the file's text, read on its side: the root never opens a path
        a client names (a FIFO would hang this loop, and `/dev/fd/N` from a shell's
        `<(...)` would be one of the root's own fds). Without a file, the root
        re-reads its own, and only if it is still a regular file.
        """
        file, text, shown = request.get("file"), request.get("text"), request.get("shown")
        if file is None and text is None:
            return load_tree(self.file, text=source.read_regular_text(self.file))
        if not (isinstance(file, str) and os.path.isabs(file) and isinstance(text, str)):
            raise ValueError("a diff or reload request carries the tree file's absolute path "
                             "('file') and its text ('text'); the root does not open files for clients")
        return load_tree(file, text=text, shown=shown if isinstance(shown, str) else file)

    def _apply(self, new: TreeSpec) -> None:
        log(f"reloading tree {new.name!r} from {new.file}")
        self._systemd_reloading()
        self.tree = new
        self.events.configure(new.log)
        self._supervisor_paths |= {node.path for node in new.nodes() if node.is_supervisor}
        paths = {node.path for node in new.nodes()}
        self.held = frozenset(path for path in self.held if path in paths)
        for path in [path for path in self.table if path not in paths]:
            del self.table[path]
        self._send_spec()

    # ----- systemd (root/systemd.py): each a no-op without NOTIFY_SOCKET -----

    def _watchdog(self) -> None:
        """WATCHDOG=1 now and every half WATCHDOG_USEC, from the loop: a stuck loop stops it."""
        if self.notifier is None or self.notifier.watchdog_interval is None:
            return
        self.notifier.watchdog()
        self.loop.call_later(self.notifier.watchdog_interval, self._watchdog)

    def _stopping(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        if self._reload_settling is not None:
            deferred, self._reload_settling = self._reload_settling, None
            deferred.abandon()  # no READY=1 after STOPPING=1

    def _systemd_reloading(self) -> None:
        """RELOADING=1 now; READY=1 once the tree has settled on the new spec (or at the
        deadline a `wait` has). A reload during one waits with it for the latest spec."""
        if self.notifier is None:
            return
        self.notifier.reloading()
        if self._reload_settling is not None:
            return
        timeout = settle.wait_timeout(self, {})
        deferred = self._reload_settling = self.waits.add(settle.SettleWait(self, timeout))

        def settled(reply: dict) -> None:
            deadline.cancel()
            if self._reload_settling is deferred:
                self._reload_settling = None
                if self.notifier is not None and not self.supervisor.stopping:
                    self.notifier.ready()

        def expired() -> None:
            deferred.abandon()  # closes the wait
            settled({})

        deadline = self.loop.call_later(timeout, expired)
        deferred.attach(settled)

    def _send_spec(self) -> None:
        """Hand the root supervisor the effective spec: the file's, plus our holds."""
        effective = self.effective_tree()
        self.generation += 1
        self.supervisor.command(ApplyCommand(effective.root, TreeContext.of(effective), self.generation))

    def _reload_wait(self, request: dict, reply: dict) -> Union[dict, Deferred]:
        """A reload with `"wait": true`: answered with the plan and the verdict once settled."""
        if not reply["ok"]:
            return reply
        changed = {change["path"] for change in reply["changes"] if change["op"] in ("add", "restart")}
        timeout = settle.wait_timeout(self, request, extra=settle.RELOAD_GRACE)
        return self.waits.add(settle.ReloadWait(self, timeout, self.loop, reply, changed))

    def _node_wait(self, request: dict, reply: dict) -> Union[dict, Deferred]:
        """restart/stop/start with `"wait": true`: answered once the node got where it was sent."""
        if not reply["ok"]:
            return reply
        wait = settle.NodeWait(self, settle.wait_timeout(self, request), request["cmd"], reply["path"], reply["pid"])
        return self.waits.add(wait)

    def _reload_from_file(self) -> None:
        reply = self._diff_or_reload({}, apply=True)
        if not reply["ok"]:
            log(f"reload on SIGHUP refused: {reply['error']}")
            for problem in reply.get("problems", []):
                log(str(Problem(**problem)))

    def _node_command(self, command: str, path: object) -> dict:
        if not isinstance(path, str) or not path:
            return _usage(f"{command} needs a node path, like 'pipeline/reader' "
                          "(the root is stopped with `orch down`)")
        if self.tree.find(path) is None:
            known = ", ".join(node.path for node in self.tree.nodes() if node.path)
            return _usage(f"no node {path!r} in tree {self.tree.name!r}; nodes: {known}")
        refusal = self._held_refusal(command, path)
        if refusal:
            return _usage(refusal)
        before = self.table.get(path, NOT_STARTED).pid
        if command == "restart":
            self.supervisor.command(RestartCommand(path))
        else:
            held = self.held | {path} if command == "stop" else self.held - {path}
            if held != self.held:
                self.events.emit(path, "held" if command == "stop" else "released")
            self.held = held
            self._send_spec()
        return {"ok": True, "tree": self.tree.name, "path": path, "generation": self.generation,
                "pid": before}

    def _held_refusal(self, command: str, path: str) -> Optional[str]:
        """Why `command` cannot act on `path` while it or an ancestor is held, or None."""
        if command == "stop":
            return None  # holding a node below a held one keeps it stopped when that starts
        holder = settle.holder(self.held, path.rpartition("/")[0])  # the nearest held ancestor
        if holder is not None:
            return (f"{path} is inside {holder}, which is held (stopped by `orch stop {holder}`); "
                    f"start that first with `orch start {holder}`")
        if command == "restart" and path in self.held:
            return f"{path} is held (stopped by `orch stop {path}`); start it with `orch start {path}`"
        return None

    def effective_tree(self) -> TreeSpec:
        """The file's tree plus our holds; kept until either changes (a copy of every node:
        `orch tree` asks for it on every call, `orch top` every second)."""
        cached = self._effective
        if cached is None or cached[0] is not self.tree or cached[1] != self.held:
            cached = self._effective = (self.tree, self.held, self.tree.with_holds(self.held))
        return cached[2]

    def rows(self, sample: bool = False) -> List[dict]:
        """The tree's rows; `sample` (a `tree` request) makes this snapshot the CPU
        baseline the next one is measured against."""
        state = NodeState.STOPPING if self.supervisor.stopping else NodeState.RUNNING
        live = livetree.snapshot(os.getpid())
        return view.build_rows(self.effective_tree(), self.table, live, os.getpid(), state, self.started_at,
                               self.orphans.drifting(), root_ready=self.supervisor.is_ready,
                               cpu=self.cpu_meter.percents(live, sample=sample))


def _event_hooks(tree: TreeSpec) -> Tuple[Tuple[str, Callable[..., object]], ...]:
    """The plugins' orch_event hooks (the catalog is loaded already: the tree was validated here)."""
    from orchestrator.spec.catalog import PluginError, load_catalog

    try:
        return tuple(load_catalog(tree.plugins).event_hooks)
    except PluginError:
        return ()  # reported when the tree was validated; workers fail to boot the same way


def _waits(request: dict) -> bool:
    return request.get("wait") is True


def _usage(message: str) -> dict:
    """An error the client caused (exit 2): a wrong path, a command that cannot apply."""
    return {"ok": False, "error": message, "usage": True}

