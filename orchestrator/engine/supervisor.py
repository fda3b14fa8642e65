"""The per-supervisor event loop: start children, notice exits, restart by strategy, stop."""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Callable, List, Optional, Tuple


from orchestrator.engine import osproc
from orchestrator.engine import spawn
from orchestrator.policy import strategy
from orchestrator.engine import streams
from orchestrator.engine.child import EXIT_BOOT_FAILED
from orchestrator.policy.intensity import RestartWindow, backoff_delay
from orchestrator.engine.loop import Loop, Timer
from orchestrator.engine.output import OutputRelay, log
from orchestrator.engine.apply import ApplyMixin
from orchestrator.engine.slot import Slot
from orchestrator.spec.model import NodeSpec, Restart, Strategy, TreeContext
from orchestrator.engine.start import StartSequence
from orchestrator.engine.stop import StopSequence
from orchestrator.engine.uplink import PipeUplink, Uplink

# A fork that fails (EAGAIN, ENOMEM) is retried from a timer with backoff, so a
# stop request still gets through while the machine is short of processes.
START_RETRY_FIRST = 0.1
START_RETRY_MAX = 5.0

def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor(ApplyMixin):
    """Supervises the children of one node; all effects happen in `loop` callbacks."""

    def __init__(self, tree: TreeContext, node: NodeSpec, uplink: Uplink, loop: Loop,
                 parent_pid: Optional[int] = None) -> None:
        self.tree = tree
        self.parent_pid = parent_pid  # the root's is its guardian's (None if it runs without one)
        self.node = node
        self.uplink = uplink
        self.loop = loop
        self.slots: List[Slot] = [Slot(spec) for spec in node.children]
        self.window = RestartWindow(node.intensity)
        self.mp = multiprocessing.get_context(tree.start_method.value)
        self.stopping = False
        self.exit_code = 0
        self.gave_up: Optional[str] = None
        self._sequence: Optional[StopSequence] = None  # restart round or shutdown
        self._starting: Optional[StartSequence] = None
        self._delayed: Optional[Timer] = None  # a backed-off restart round, not yet begun
        self._queued: List[Callable[[], None]] = []  # commands and reloads waiting for idle
        self._retiring: List[Slot] = []  # removed by a reload, stopping; reaped before we exit
        self.on_hangup: Optional[Callable[[], None]] = None  # the root reloads on SIGHUP
        self._generation = 0  # of the last spec applied; acknowledged up once fully done
        self._acks_due: set = set()  # supervisor children still applying that generation
        self._applied_here = True
        self._pending: List[Tuple[Slot, int]] = []  # failures seen while busy
        self._ready_sent = False

    # ----- lifecycle -------------------------------------------------------

    def run(self) -> int:
        # Two fds per child (exit fd, output pipe) plus headroom for the control plane.
        osproc.ensure_fd_limit(2 * len(self.slots) + 256)
        # Objects that exist now are never collected in children, so the GC does not
        # touch (and copy) the pages every forked child shares with us.
        gc.freeze()
        for signum in osproc.HANDLED_SIGNALS:
            self.loop.on_signal(signum, self._on_stop_signal)
        if self.on_hangup is not None:
            self.loop.on_signal(signal.SIGHUP, self.on_hangup)
        self.loop.on_signal(osproc.KILL_SUBTREE, self.abandon)
        osproc.unblock_handled_signals()
        self.uplink.attach(self)
        streams.attach(self.loop)  # our output backlogs are written from this loop
        self._start_in_order([slot for slot in self.slots if not slot.spec.held])
        try:
            self.loop.run()
        finally:
            streams.detach()  # the loop closes after this
        return self.exit_code

    def child_pids(self) -> List[int]:
        """Pids of our node processes, those being retired by a reload included."""
        return [slot.running.pid for slot in self.slots + self._retiring if slot.running is not None]

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
        if self._sequence is not None:
            self._sequence.force()

    def shutdown(self, exit_code: int = 0) -> None:
        """Stop every child in reverse spec order, then leave the loop.

        A second request while stopping SIGKILLs what is left (a second Ctrl-C).
        """
        if self.stopping:
            if self._sequence is not None:
                log(f"{self._label()}: second stop request; killing the remaining processes")
                self._sequence.force()
            return
        self.stopping = True
        self.exit_code = exit_code
        if not self.node.path:
            log(f"stopping tree {self.tree.name!r}")
        self._pending.clear()
        for slot in self.slots:
            self._cancel_retry(slot)
        if self._starting is not None:
            self._starting.cancel()
            self._starting = None
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        if self._sequence is not None:
            self._sequence.cancel()
        self._queued.clear()
        self._run_sequence(list(reversed(self.slots)) + self._retiring, self._finish)

    def _finish(self) -> None:
        self._sequence = None
        self.loop.stop()

    # ----- starting --------------------------------------------------------

    def _start_in_order(self, slots: List[Slot], then: Callable[[], None] = lambda: None) -> None:
        def done() -> None:
            then()  # before _after_start, which may begin a queued apply
            self._after_start()
        self._starting = StartSequence(slots, self._start, done)
        self._starting.begin()

    def _after_start(self) -> None:
        self._starting = None
        self._check_ready()
        pending, self._pending = self._pending, []
        for slot, code in pending:
            if slot.running is None and slot.retry is None and not slot.spec.held:
                self._on_failure(slot, code)
        if self._queued and not self._busy() and not self.stopping:
            self._queued.pop(0)()

    def _busy(self) -> bool:
        return self._sequence is not None or self._starting is not None or self._delayed is not None

    def _start(self, slot: Slot) -> None:
        slot.retry = None
        if slot.retired or slot.running is not None:
            # One process per node, always: a command or timer that still holds a
            # slot a reload replaced, or one that already runs, starts nothing.
            return
        try:
            running = spawn.start_node(self.mp, self.tree, slot.spec)
        except OSError as error:
            self._retry_start(slot, error)
            return
        slot.start_failures = 0
        slot.running = running
        slot.ready = False
        slot.state = "starting" if slot.spec.is_supervisor else "running"
        self.loop.add_reader(running.exit_fd, lambda: self._on_exit(slot))
        if running.output_fd is not None:
            relay = OutputRelay(running.output_fd, slot.spec.path, self._close_relay)
            self.loop.add_reader(running.output_fd, relay.on_readable)
        if running.uplink is not None:
            self.loop.add_reader(running.uplink.fileno(), lambda: self._on_child_message(slot))
        self._emit(slot)

    def _retry_start(self, slot: Slot, error: OSError) -> None:
        slot.start_failures += 1
        delay = min(START_RETRY_FIRST * 2 ** (slot.start_failures - 1), START_RETRY_MAX)
        log(f"{slot.spec.path}: cannot start process ({error}); retrying in {delay:g}s")
        slot.state = "backoff"
        slot.retry = self.loop.call_later(delay, lambda: self._start(slot))
        self._emit(slot)

    def _cancel_retry(self, slot: Slot) -> None:
        if slot.retry is not None:
            slot.retry.cancel()
            slot.retry = None
            slot.state = "stopped"
            self._emit(slot)

    def _close_relay(self, relay: OutputRelay) -> None:
        self.loop.remove_reader(relay.fd)
        os.close(relay.fd)

    # ----- exits -----------------------------------------------------------

    def _on_exit(self, slot: Slot) -> None:
        running = slot.running
        if running is None:
            return
        if running.uplink is not None:
            self._drain_messages(slot)
            self.loop.remove_reader(running.uplink.fileno())
        self.loop.remove_reader(running.exit_fd)
        code = spawn.reap(running)
        slot.last_uptime = time.monotonic() - running.started_mono
        if not slot.spec.is_supervisor:
            # Helpers the worker forked share its process group: none outlives it.
            osproc.send(running.pid, signal.SIGKILL, group=True)
        slot.running = None
        slot.ready = False
        expected, slot.stop_requested = slot.stop_requested, False
        # Sequences hear of the exit after the slot's state is settled: finishing
        # one may start this very slot again.
        sequences = [seq for seq in (self._sequence, self._starting) if seq is not None]
        if slot.spec.path in self._acks_due:
            # It will restart with the spec it was handed, or not at all: done either way.
            self._acks_due.discard(slot.spec.path)
            self._maybe_acknowledge()
        retired = slot in self._retiring
        if retired:
            self._retiring.remove(slot)
        if expected or self.stopping or slot.spec.held or retired:
            slot.state = "stopped"
            self._emit(slot)
        else:
            log(f"{slot.spec.path} {describe_exit(code)}")
            slot.failures += 1
            self._on_failure(slot, code)
        for sequence in sequences:
            sequence.exited(slot)

    def _on_failure(self, slot: Slot, code: int) -> None:
        if self._busy():
            # Decided once the current round is over; until then it is on its way
            # somewhere, not failed for good (a reload's verdict must not stop here).
            slot.state = "restarting" if strategy.should_restart(slot.spec.restart, code) else "failed"
            self._emit(slot)
            self._pending.append((slot, code))
            return
        if code == EXIT_BOOT_FAILED and not slot.spec.is_supervisor:
            self._give_up(f"{slot.spec.path} could not boot (exit code {EXIT_BOOT_FAILED}); see its output")
            return
        if not strategy.should_restart(slot.spec.restart, code):
            slot.state = "stopped" if code == 0 else "failed"
            self._emit(slot)
            self._check_ready()
            return
        if not self.window.allow(time.monotonic()):
            self._give_up(self._intensity_reason(slot, code))
            return
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: Slot) -> None:
        backoff = slot.spec.backoff
        if slot.last_uptime >= backoff.cap:
            slot.quick_exits = 0
        delay = backoff_delay(slot.quick_exits, backoff)
        slot.quick_exits += 1
        if delay <= 0:
            self._restart_round(slot)
            return
        log(f"{slot.spec.path} keeps exiting soon after start; restarting in {delay:g}s")
        slot.state = "backoff"
        self._emit(slot)
        if self.node.strategy is Strategy.ONE_FOR_ONE:
            # Only this child is affected, so its wait need not hold up its siblings.
            slot.retry = self.loop.call_later(delay, lambda: self._restart_alone(slot))
        else:
            self._delayed = self.loop.call_later(delay, lambda: self._end_delay(slot))

    def _restart_alone(self, slot: Slot) -> None:
        slot.retry = None
        slot.restarts += 1
        self._start(slot)

    def _end_delay(self, slot: Slot) -> None:
        self._delayed = None
        self._restart_round(slot)

    def _intensity_reason(self, slot: Slot, code: int) -> str:
        limit = self.node.intensity
        reason = (f"{slot.spec.path} {describe_exit(code)}; more than {limit.max_restarts} "
                  f"restarts within {limit.within:g}s")
        if slot.report:
            reason += f" (because: {slot.report})"
        return reason

    def _restart_round(self, failed: Slot) -> None:
        names = [slot.spec.name for slot in self.slots]
        stop_names, start_names = strategy.plan_restart(names, failed.spec.name, self.node.strategy)
        by_name = {slot.spec.name: slot for slot in self.slots}
        to_start = [by_name[name] for name in start_names
                    if by_name[name] is failed or by_name[name].spec.restart is not Restart.TEMPORARY]
        to_stop = [by_name[name] for name in stop_names if by_name[name].running is not None]
        failed.state = "restarting"
        self._emit(failed)
        log(f"{failed.spec.path}: restarting {', '.join(slot.spec.path for slot in to_start)} "
            f"({self.node.strategy.value}, restart {self.window.recent()} of at most "
            f"{self.node.intensity.max_restarts} within {self.node.intensity.within:g}s)")
        self._run_sequence(to_stop, lambda: self._finish_round(to_start))

    def _finish_round(self, to_start: List[Slot]) -> None:
        self._sequence = None
        to_start = [slot for slot in to_start
                    if slot.running is None and slot.retry is None and not slot.spec.held]
        for slot in to_start:
            slot.restarts += 1
        self._start_in_order(to_start)

    def _run_sequence(self, slots: List[Slot], on_done) -> None:
        self._sequence = StopSequence(self.loop, slots, on_done, self._emit)
        self._sequence.begin()

    def _give_up(self, reason: str) -> None:
        log(f"{self._label()}: giving up: {reason}")
        self.gave_up = reason
        self.uplink.gave_up(self.node.path, reason)
        self.shutdown(exit_code=1)

    # ----- messages from supervisor children -------------------------------

    def _on_child_message(self, slot: Slot) -> None:
        running = slot.running
        try:
            message = running.uplink.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(running.uplink.fileno())
            return
        self._handle_message(slot, message)

    def _drain_messages(self, slot: Slot) -> None:
        conn: Connection = slot.running.uplink
        try:
            while conn.poll(0):
                self._handle_message(slot, conn.recv())
        except (EOFError, OSError):
            pass

    def _handle_message(self, slot: Slot, message: tuple) -> None:
        kind, path = message[0], message[1]
        if path == slot.spec.path:
            if kind == "ready":
                slot.ready = True
                slot.state = "running"
                self._emit(slot)
                if self._starting is not None:
                    self._starting.ready(slot)
                else:
                    self._check_ready()
                return
            if kind == "gave_up":
                slot.report = message[2]
            if kind == "applied":
                if message[2] == self._generation:
                    self._acks_due.discard(path)
                    self._maybe_acknowledge()
                return
        self.uplink.forward(message)

    # ----- reporting -------------------------------------------------------

    def _emit(self, slot: Slot) -> None:
        running = slot.running
        self.uplink.node_event(
            slot.spec.path,
            running.pid if running else None,
            slot.state,
            slot.restarts,
            running.started_at if running else None,
            slot.failures,
        )

    def _check_ready(self) -> None:
        if self._ready_sent or self.stopping or self._busy():
            return
        if all(slot.settled for slot in self.slots):
            self._ready_sent = True
            self.uplink.ready(self.node.path)

    def _label(self) -> str:
        return self.node.path or self.tree.name


def run_child_supervisor(tree: TreeContext, node: NodeSpec, conn: Connection, parent_pid: int) -> int:
    """Entry point inside a supervisor process below the root."""
    loop = Loop()
    supervisor = Supervisor(tree, node, PipeUplink(conn, loop), loop, parent_pid)
    try:
        return supervisor.run()
    finally:
        loop.close()
