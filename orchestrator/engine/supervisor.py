"""One supervisor: start its children, notice exits, restart by strategy, obey commands, stop.

All effects happen in callbacks of its loop. What it starts and signals goes
through a `spawn.Starter` and what time it is comes from `clock`, so a unit test
drives it with fakes; `supervisor_main` is its process's entry below the root.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from orchestrator.engine import child
from orchestrator.engine import notify
from orchestrator.engine import osproc
from orchestrator.engine import spawn
from orchestrator.engine import streams
from orchestrator.engine.acks import Acknowledgements
from orchestrator.engine.health import Health
from orchestrator.engine.loop import Loop
from orchestrator.engine.memory_guard import MemoryGuard
from orchestrator.engine.messages import (Applied, ApplyCommand, Command, GaveUp, LogLine, NodeEvent,
                                          Notice, Ready, UpMessage)
from orchestrator.engine.operations import Operations
from orchestrator.engine import output
from orchestrator.engine.output import log
from orchestrator.engine.pacing import RestartPacing, describe_exit
from orchestrator.engine.slot import Slot
from orchestrator.engine.states import NodeState
from orchestrator.engine.uplink import PipeUplink, Uplink
from orchestrator.engine.watch import ProcessWatch
from orchestrator.policy import strategy
from orchestrator.policy.plan import LiveChild, ReloadPlan, plan_reload
from orchestrator.spec.model import Backend, NodeSpec, Restart, Strategy, TreeContext

# A fork that fails (EAGAIN, ENOMEM) is retried from a timer with backoff, so a
# stop request still gets through while the machine is short of processes.
START_RETRY_FIRST = 0.1
START_RETRY_MAX = 5.0


class Supervisor:
    """Supervises the children of one node.

    One operation runs at a time (operations.py): a failure seen meanwhile is
    judged once it is over, and commands from above wait behind it.
    """

    def __init__(self, tree: TreeContext, node: NodeSpec, uplink: Uplink, loop: Loop,
                 parent_pid: Optional[int] = None, *, clock: Callable[[], float] = time.monotonic,
                 starter: Optional[spawn.Starter] = None) -> None:
        self.tree = tree
        self.parent_pid = parent_pid  # the root's is its guardian's (None if it runs without one)
        self.node = node
        self.uplink = uplink
        self.loop = loop
        self.starter = starter if starter is not None else spawn.ProcessStarter(
            spawn.mp_context(tree.start_method), child.worker_main, supervisor_main)
        self.slots: List[Slot] = [Slot(spec) for spec in node.children]
        self.pacing = RestartPacing(node.intensity, clock)
        self.clock = clock
        # Both only observe and report; what follows (signals, restarts) is decided here.
        self.health = Health(loop, clock, lambda: self.slots, lambda: self.stopping,
                             self._became_ready, self._emit, self._missed_deadline)
        self.acks = Acknowledgements(lambda generation: self.uplink.send(Applied(self.node.path, generation)))
        self.stopping = False
        self.exit_code = 0
        self.gave_up: Optional[str] = None
        self.on_hangup: Optional[Callable[[], None]] = None  # the root reloads on SIGHUP
        self.on_stop: Optional[Callable[[], None]] = None  # the root tells systemd it stops
        self._watch = ProcessWatch(loop, self.starter, self._on_exit, self._handle_message, self._log_error)
        self.ops = Operations(loop, self.starter, self._start, self._stopping_child, self._on_idle)
        self._retiring: List[Slot] = []  # removed by a reload, stopping; reaped before we exit
        self._pending: List[Tuple[Slot, int]] = []  # failures seen while busy
        self._ready_sent = False
        self.memory = MemoryGuard(loop, clock, lambda: self.slots, self._over_memory, self.uplink.send)

    # ----- lifecycle -------------------------------------------------------

    def run(self) -> int:
        """Run this process's loop until every child is stopped; the exit code."""
        # Four fds per child (exit fd, stdout and stderr pipes, its log file) plus headroom.
        osproc.ensure_fd_limit(4 * len(self.slots) + 256)
        # Objects that exist now are never collected in children, so the GC does not
        # touch (and copy) the pages every forked child shares with us.
        gc.freeze()
        streams.attach(self.loop)  # our output backlogs are written from this loop
        try:
            self.begin()
            self.loop.run()
        finally:
            self._watch.close()  # what workers left in their pipes reaches their logs
            streams.detach()  # the loop closes after this
            self.health.close()
        return self.exit_code

    @property
    def notify_ignored(self) -> int:
        """sd_notify datagrams from a pid that is none of our workers' (the root's `ping` shows it)."""
        return self.health.ignored

    def _on_notify(self, pid: int, fields: Dict[str, str]) -> None:
        """One sd_notify datagram, as the socket would deliver it (unit tests call this)."""
        self.health.on_notify(pid, fields)

    @property
    def is_ready(self) -> bool:
        """Every child is up (ready) or settled: Ready was reported."""
        return self._ready_sent

    def begin(self) -> None:
        """Listen for signals and commands, and start the children that are not held."""
        for signum in osproc.HANDLED_SIGNALS:
            self.loop.on_signal(signum, self._on_stop_signal)
        if self.on_hangup is not None:
            self.loop.on_signal(signal.SIGHUP, self.on_hangup)
        self.loop.on_signal(osproc.KILL_SUBTREE, self.abandon)
        osproc.unblock_handled_signals()
        self.health.open(self._label())
        self.uplink.attach(self)
        self.ops.start([slot for slot in self.slots if not slot.spec.held])
        self.memory.configure(self.node)

    def child_pids(self) -> FrozenSet[int]:
        """Pids of our node processes, those being retired by a reload included."""
        return self._watch.pids()

    def _on_stop_signal(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.abandon()
        else:
            self.shutdown()

    def abandon(self) -> None:
        """Kill this subtree now, helpers included: our parent died or told us to."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log(f"{self._label()}: parent process died; killing this subtree")
        if not self.stopping:
            self.shutdown(exit_code=1)
        self.ops.force()

    def shutdown(self, exit_code: int = 0) -> None:
        """Stop every child in reverse spec order, then leave the loop.

        A second request while stopping SIGKILLs what is left (a second Ctrl-C).
        """
        if self.stopping:
            if self.ops.busy:  # the final stop has not finished
                log(f"{self._label()}: second stop request; killing the remaining processes")
                self.ops.force()
            return
        self.stopping = True
        self.exit_code = exit_code
        self.memory.stop()
        if self.on_stop is not None:
            self.on_stop()
        if not self.node.path:
            log(f"stopping tree {self.tree.name!r}")
        self._pending.clear()
        for slot in self.slots:
            self._cancel_retry(slot)
        self.ops.close(list(reversed(self.slots)) + self._retiring, self.loop.stop)

    # ----- starting --------------------------------------------------------

    def _on_idle(self) -> None:
        """A start sequence ended: report readiness, then judge the failures it held back."""
        self._check_ready()
        pending, self._pending = self._pending, []
        for slot, code in pending:
            if slot.running is None and slot.retry is None and not slot.spec.held:
                self._on_failure(slot, code)

    def _start(self, slot: Slot) -> None:
        slot.retry = None
        if slot.retired or slot.running is not None:
            # One process per node, always: a command or timer that still holds a
            # slot a reload replaced, or one that already runs, starts nothing.
            return
        try:
            slot.running = self._watch.start(slot, self.tree)
        except OSError as error:
            self._retry_start(slot, error)
            return
        self.pacing.started(slot)
        slot.start_failures = 0
        slot.ready = False
        slot.status = None
        slot.state = NodeState.STARTING if slot.waits_for_ready else NodeState.RUNNING
        self.health.started(slot)
        self._emit(slot, "started")

    def _retry_start(self, slot: Slot, error: OSError) -> None:
        slot.start_failures += 1
        delay = min(START_RETRY_FIRST * 2 ** (slot.start_failures - 1), START_RETRY_MAX)
        log(f"{slot.spec.path}: cannot start process ({error}); retrying in {delay:g}s")
        slot.state = NodeState.BACKOFF
        slot.retry = self.loop.call_later(delay, lambda: self._start(slot))
        self._emit(slot, "backoff", reason=f"cannot start process ({error}); retrying in {delay:g}s")

    def _cancel_retry(self, slot: Slot) -> None:
        if slot.retry is not None:
            slot.retry.cancel()
            slot.retry = None
            slot.state = NodeState.STOPPED
            self._emit(slot, "stopped")

    # ----- exits and restarts ----------------------------------------------

    def _on_exit(self, slot: Slot) -> None:
        if slot.running is None:
            return
        pid = slot.running.pid
        code = self._watch.reap(slot)
        if slot.spec.is_supervisor:  # a SIGKILLed one could not remove its sd_notify socket
            notify.remove_socket_of(slot.running.pid, os.environ.get(notify.DIR_ENV))
        if self.memory.reaped(slot.running):
            code = code or 1  # stopped for max_memory: a failure, however it exited
        self.pacing.exited(slot)
        slot.running = None
        slot.ready = False
        slot.status = None
        self.health.exited(slot)
        expected, slot.stop_requested = slot.stop_requested, False
        # The sequence hears of the exit after the slot's state is settled: finishing
        # it may start this very slot again.
        sequence = self.ops.current
        # It will restart with the spec it was handed, or not at all: done either way.
        self.acks.child_done(slot.spec.path)
        retired = slot in self._retiring
        if retired:
            self._retiring.remove(slot)
        why, slot.kill_reason = slot.kill_reason, None
        if expected or self.stopping or slot.spec.held or retired:
            slot.state = NodeState.STOPPED
            self._emit(slot, "stopped", exit_code=code)
        else:
            log(f"{slot.spec.path} {describe_exit(code)}")
            slot.failures += 1
            # An event only: the state the table shows follows once the restart is decided.
            self.uplink.send(Notice(slot.spec.path, "exited", why, pid, code, slot.restarts))
            self._on_failure(slot, code)
        if sequence is not None:
            sequence.exited(slot)

    def _on_failure(self, slot: Slot, code: int) -> None:
        if self.ops.busy:
            # Decided once the current round is over; until then it is on its way
            # somewhere, not failed for good (a reload's verdict must not stop here).
            will_restart = strategy.should_restart(slot.spec.restart, code)
            slot.state = NodeState.RESTARTING if will_restart else NodeState.FAILED
            self._emit(slot, "restarting" if will_restart else None)
            self._pending.append((slot, code))
            return
        if code == child.EXIT_BOOT_FAILED and not slot.spec.is_supervisor:
            self._give_up(f"{slot.spec.path} could not boot (exit code {child.EXIT_BOOT_FAILED}); see its output")
            return
        if not strategy.should_restart(slot.spec.restart, code):
            slot.state = NodeState.STOPPED if code == 0 else NodeState.FAILED
            self._emit(slot)
            self._check_ready()
            return
        if not self.pacing.admit():
            self._give_up(self.pacing.exceeded(slot, code))
            return
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: Slot) -> None:
        delay = self.pacing.delay(slot)
        if delay <= 0:
            self._restart_round(slot)
            return
        log(f"{slot.spec.path} keeps exiting soon after start; restarting in {delay:g}s")
        slot.state = NodeState.BACKOFF
        self._emit(slot, "backoff", reason=f"it keeps exiting soon after start; restarting in {delay:g}s")
        if self.node.strategy is Strategy.ONE_FOR_ONE:
            # Only this child is affected, so its wait need not hold up its siblings.
            slot.retry = self.loop.call_later(delay, lambda: self._restart_alone(slot))
        else:
            self.ops.after(delay, lambda: self._restart_round(slot))

    def _restart_alone(self, slot: Slot) -> None:
        slot.retry = None
        slot.restarts += 1
        self._start(slot)

    def _restart_round(self, failed: Slot) -> None:
        if self.node.strategy is Strategy.ONE_FOR_ONE:
            # Only the failed child: no lists of every sibling on the restart path.
            to_start, to_stop = [failed], []
        else:
            names = [slot.spec.name for slot in self.slots]
            stop_names, start_names = strategy.plan_restart(names, failed.spec.name, self.node.strategy)
            by_name = {slot.spec.name: slot for slot in self.slots}
            to_start = [by_name[name] for name in start_names
                        if by_name[name] is failed or by_name[name].spec.restart is not Restart.TEMPORARY]
            to_stop = [by_name[name] for name in stop_names if by_name[name].running is not None]
        failed.state = NodeState.RESTARTING
        self._emit(failed, "restarting")
        log(f"{failed.spec.path}: restarting {', '.join(slot.spec.path for slot in to_start)} "
            f"({self.node.strategy.value}, {self.pacing.budget()})")
        self.ops.stop_then_start(to_stop, lambda: self._still_to_restart(to_start))

    @staticmethod
    def _still_to_restart(slots: List[Slot]) -> List[Slot]:
        """What a round starts once its stops are done: what nothing else has started or held meanwhile."""
        slots = [slot for slot in slots if slot.running is None and slot.retry is None and not slot.spec.held]
        for slot in slots:
            slot.restarts += 1
        return slots

    def _give_up(self, reason: str) -> None:
        log(f"{self._label()}: giving up: {reason}")
        self.gave_up = reason
        self.uplink.send(GaveUp(self.node.path, reason))
        self.shutdown(exit_code=1)

    # ----- commands from above ---------------------------------------------

    def command(self, command: Command) -> None:
        """Run a command for a node in this subtree, or pass it down to the supervisor owning it."""
        if isinstance(command, ApplyCommand):
            self.ops.when_idle(lambda: self.apply(command.node, command.tree, command.generation))
            return
        path = command.path
        parent, _, name = path.rpartition("/")
        if parent == self.node.path:
            # Looked up when it runs, not now: a reload queued ahead of it may replace
            # the slot, and acting on the old one would start a second process for the node.
            self.ops.when_idle(lambda: self._restart_child(name))
            return
        for slot in self.slots:
            if slot.running is not None and slot.running.uplink is not None \
                    and path.startswith(slot.spec.path + "/"):
                self._send_down(slot, command)
                return

    def _restart_child(self, name: str) -> None:
        """Restart one child; orch causes this stop, so it never counts as a failure.

        (`orch stop`/`orch start` arrive as an `ApplyCommand` with the node's `held` flag.)
        """
        slot = next((slot for slot in self.slots if slot.spec.name == name), None)
        if slot is None:
            return  # a reload removed it meanwhile
        if not slot.spec.held:
            self._cancel_retry(slot)
            slot.restarts += 1
            self._operate(stop=[slot], start=[slot])

    def apply(self, node: NodeSpec, tree: TreeContext, generation: int) -> None:
        """Go from the current spec to `node` touching only what changed (plan_reload).

        Acknowledged upward as `Applied(path, generation)` once our own stops and
        starts are done and every supervisor child we passed a part to has acknowledged.
        """
        plan = plan_reload([LiveChild(slot.spec, slot.running is not None) for slot in self.slots], node)
        old = {slot.spec.name: slot for slot in self.slots}
        self.node, self.tree = node, tree
        self.pacing.intensity = node.intensity
        self.slots = [self._slot_for(spec, old, plan) for spec in node.children]
        self.memory.configure(self.node)
        new = {slot.spec.name: slot for slot in self.slots}
        for name in plan.remove + plan.replace:
            old[name].retired = True  # never to be started again: its node is gone or replaced
        for name in plan.remove + plan.replace + plan.hold:
            self._cancel_retry(old[name])
        self._retiring += [old[name] for name in plan.retire]
        self.acks.begin(generation, [new[name].spec.path for name in plan.send_down])
        for name in plan.send_down:
            self._send_down(new[name], ApplyCommand(new[name].spec, tree, generation))
        self._operate(stop=[old[name] for name in plan.stop], start=[new[name] for name in plan.start],
                      then=self.acks.local_done)

    @staticmethod
    def _slot_for(spec: NodeSpec, old: Dict[str, Slot], plan: ReloadPlan) -> Slot:
        """The slot that runs `spec` from now on: the same one, updated, or a new one."""
        if spec.name in plan.keep:
            slot = old[spec.name]
            slot.spec = spec
            return slot
        return Slot(spec, restarts=old[spec.name].restarts + 1 if spec.name in old else 0)

    def _operate(self, stop: List[Slot], start: List[Slot], then: Callable[[], None] = lambda: None) -> None:
        """A command's operation: stop, then start what is still down and not held."""
        self.ops.stop_then_start(
            stop, lambda: [slot for slot in start if slot.running is None and not slot.spec.held], then)

    @staticmethod
    def _send_down(slot: Slot, command: Command) -> None:
        """Pass `command` to a supervisor child (callers check it runs and has a pipe)."""
        assert slot.running is not None and slot.running.uplink is not None
        try:
            slot.running.uplink.send(command)
        except OSError:
            pass  # it is exiting; its exit is handled like any other

    # ----- messages from supervisor children, and reports up --------------

    def _handle_message(self, slot: Slot, message: UpMessage) -> None:
        """A message from a supervisor child: about the child itself, or forwarded up as is.

        A `MemoryReport` is the child's subtree RSS, for us alone: never forwarded."""
        if self.memory.received(slot, message):
            return
        if message.path == slot.spec.path:
            if isinstance(message, Ready):
                self._became_ready(slot)
                return
            if isinstance(message, GaveUp):
                slot.report = message.reason
            if isinstance(message, Applied):
                self.acks.child_applied(message.path, message.generation)
                return
        self.uplink.send(message)

    def _emit(self, slot: Slot, event: Optional[str] = None, *, exit_code: Optional[int] = None,
              reason: Optional[str] = None) -> None:
        """Report the slot's state up; `event` names what happened (events.KINDS), None
        for a change only `orch tree` shows (a STATUS= from the worker)."""
        running = slot.running
        self.uplink.send(NodeEvent(
            slot.spec.path,
            running.pid if running else None,
            slot.state,
            slot.restarts,
            running.started_at if running else None,
            slot.failures,
            slot.is_ready,
            slot.status,
            event,
            exit_code,
            reason,
        ))

    def _stopping_child(self, slot: Slot) -> None:
        """A stop sequence signalled `slot` (SIGTERM, or SIGKILL for a daemon or a forced stop)."""
        self._emit(slot, "stopping", reason=slot.kill_reason)

    def _log_error(self, path: str, message: str) -> None:
        """A worker's output could not be written to its log: say so (once per episode)."""
        log(f"{path}: {message}")
        self.uplink.send(Notice(path, "log_error", message))

    def _became_ready(self, slot: Slot) -> None:
        """A supervisor child reported Ready, or a notify worker sent READY=1."""
        slot.ready = True
        slot.state = NodeState.RUNNING
        self._emit(slot, "ready")
        if not self.ops.started(slot):
            self._check_ready()

    # ----- what the memory guard and health report: stop the process -------

    def _over_memory(self, slot: Slot, why: str) -> None:
        log(f"{slot.spec.path}: {why}; stopping it (SIGTERM, SIGKILL after {slot.spec.stop_budget():g}s)")
        self._terminate(slot, signal.SIGTERM, group=True, why=why)

    def _missed_deadline(self, slot: Slot, why: str) -> None:
        log(f"{slot.spec.path}: {why}; aborting it (SIGABRT, SIGKILL after {slot.spec.stop_budget():g}s)")
        self._terminate(slot, signal.SIGABRT, group=False, why=why)

    def _terminate(self, slot: Slot, signum: int, group: bool, why: str) -> None:
        """Signal the slot's process, and SIGKILL it if it still runs after its stop budget.

        Its exit is judged like any other (_on_exit), so the restart is decided there;
        its `exited` event carries `why`.
        """
        running = slot.running
        assert running is not None
        slot.kill_reason = why
        self._emit(slot, "stopping", reason=why)
        self.starter.signal(running, signum, group=group)
        self.loop.call_later(slot.spec.stop_budget(), lambda: self._kill_if_alive(slot, running))

    def _kill_if_alive(self, slot: Slot, running: object) -> None:
        if slot.running is running and slot.running is not None:
            self.starter.signal(slot.running, signal.SIGKILL)

    def _check_ready(self) -> None:
        if self._ready_sent or self.stopping or self.ops.busy:
            return
        if all(slot.settled for slot in self.slots):
            self._ready_sent = True
            self.uplink.send(Ready(self.node.path))

    def _label(self) -> str:
        return self.node.path or self.tree.name


def supervisor_main(tree: TreeContext, node: NodeSpec, uplink: Connection, parent_pid: int) -> None:
    """Target of a supervisor process: run its loop until stopped or it gives up."""
    # SIGTERM, not SIGKILL: an orphaned supervisor must live long enough to
    # SIGKILL its children's process groups, helpers they forked included.
    child.prepare(tree, node, parent_pid, [uplink.fileno()], signal.SIGTERM)
    sys.exit(run_child_supervisor(tree, node, uplink, parent_pid))


def run_child_supervisor(tree: TreeContext, node: NodeSpec, conn: Connection, parent_pid: int) -> int:
    """Run a supervisor below the root in this process, reporting to its parent over `conn`."""
    loop = Loop()
    uplink: Uplink = PipeUplink(conn, loop)
    # orch.log has one writer, the root: our own messages travel up to it.
    output.forward_log(lambda text: uplink.send(LogLine(node.path, os.getpid(), text)))
    starter: Any = None  # a RayStarter
    if node.backend is Backend.RAY:
        # Ray is imported here, in this process only, which never forks: its workers are actors.
        from orchestrator.engine import ray_starter

        try:
            starter = ray_starter.RayStarter(node)
        except Exception as error:  # no cluster at that address, say: a failure of this node
            log(f"{node.path}: cannot connect to Ray ({node.ray.get('address', 'auto')}): {error}")
            return 1
        uplink = ray_starter.RayUplink(uplink, starter)
    supervisor = Supervisor(tree, node, uplink, loop, parent_pid, starter=starter)
    try:
        return supervisor.run()
    finally:
        loop.close()
        if starter is not None:
            starter.close()  # no actor of ours is left on the cluster
