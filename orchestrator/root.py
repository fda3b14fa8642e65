"""The `orch up` process: the root supervisor plus the state table and the control server."""
from __future__ import annotations

import os
import signal
import time
from typing import Dict, Optional, Set

from orchestrator import livetree, osproc, spawn, titles, view
from orchestrator.control import ControlServer, RunDir
from orchestrator.errors import EXIT_FAILURE
from orchestrator.loop import Loop
from orchestrator.output import log
from orchestrator.reconcile import Reconciler
from orchestrator.spec import TreeContext, TreeSpec
from orchestrator.supervisor import Supervisor

LIVE_STATES = ("starting", "running", "stopping")
COMMANDS = ("ping", "tree", "down")


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

    def __init__(self, tree: TreeSpec, ready_fd: Optional[int] = None) -> None:
        self.tree = tree
        self.table: Dict[str, dict] = {}
        self.started_at = time.time()
        self.loop = Loop()
        self.supervisor = Supervisor(TreeContext.of(tree), tree.root, self, self.loop)
        self.run_dir = RunDir(tree.name)
        self._ready_fd = ready_fd
        self._server: Optional[ControlServer] = None
        self.reconciler = Reconciler(self.loop, tree.name, self._known_children)

    def _known_children(self) -> Set[int]:
        """Our own children: node processes and multiprocessing's resource tracker."""
        pids = {slot.running.pid for slot in self.supervisor.slots if slot.running is not None}
        tracker = spawn.tracker_pid()
        return pids | ({tracker} if tracker else set())

    def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 when the tree gave up."""
        self.run_dir.acquire()
        titles.set_node_title(self.tree.name, "")
        try:
            self._server = ControlServer(self.loop, self.run_dir.socket_path, self.handle)
            self.reconciler.start()
            code = self.supervisor.run()
        finally:
            self.reconciler.finish()
            if self._server is not None:
                self._server.close()
            self.run_dir.release()
            self.loop.close()
            spawn.release_helpers()
        if self.supervisor.gave_up:
            log(f"tree {self.tree.name!r} gave up: {self.supervisor.gave_up}")
            notify(self._ready_fd, f"failed {self.supervisor.gave_up}")
            return EXIT_FAILURE
        notify(self._ready_fd, "failed the tree was stopped before it was up")
        return code

    # ----- Uplink: events from the root supervisor and forwarded from below -----

    def attach(self, supervisor) -> None:
        pass

    def node_event(self, path, pid, state, restarts, started_at) -> None:
        self.table[path] = {"pid": pid, "state": state, "restarts": restarts, "started_at": started_at}
        if state not in LIVE_STATES:
            self._forget_subtree(path)

    def _forget_subtree(self, path: str) -> None:
        """A supervisor that is gone took its subtree with it (parent-death signals).

        A worker killed that way leaves any helper it forked orphaned, and its
        supervisor is gone too: SIGKILL each worker's process group from here.
        """
        prefix = path + "/"
        for other, entry in self.table.items():
            if other.startswith(prefix) and entry["pid"] is not None:
                osproc.send(entry["pid"], signal.SIGKILL, group=True)
                entry.update(pid=None, state="stopped", started_at=None)

    def ready(self, path: str) -> None:
        if path:
            return
        count = sum(1 for entry in self.table.values() if entry["pid"]) + 1
        log(f"tree {self.tree.name!r} is up: {count} processes, root pid {os.getpid()} "
            f"(`orch tree {self.tree.name}` to look, Ctrl-C or `orch down {self.tree.name}` to stop)")
        notify(self._ready_fd, f"ready {os.getpid()}")
        self._ready_fd = None

    def gave_up(self, path: str, reason: str) -> None:
        pass  # the root's own give-up is read from the supervisor when run() returns

    def forward(self, message: tuple) -> None:
        if message[0] == "node":
            self.node_event(*message[1:])

    # ----- control requests -----------------------------------------------

    def handle(self, request: dict) -> dict:
        command = request["cmd"]
        if command == "ping":
            return {"ok": True, "tree": self.tree.name, "pid": os.getpid(), "file": self.tree.file}
        if command == "tree":
            return {"ok": True, "tree": self.tree.name, "file": self.tree.file, "nodes": self.rows()}
        if command == "down":
            pids = sorted(livetree.snapshot(os.getpid()))
            self.loop.call_later(0, self.supervisor.shutdown)
            return {"ok": True, "pid": os.getpid(), "pids": pids,
                    "stop_budget": self.tree.root.stop_budget()}
        return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(COMMANDS)}"}

    def rows(self):
        state = "stopping" if self.supervisor.stopping else "running"
        live = livetree.snapshot(os.getpid())
        return view.build_rows(self.tree, self.table, live, os.getpid(), state, self.started_at,
                               self.reconciler.drifting())
