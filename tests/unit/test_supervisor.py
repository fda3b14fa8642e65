"""supervisor.py driven by hand: a fake loop, clock and process starter, a recording uplink.

No process is started and no signal is sent. The test is the OS: it fires the
loop's timers, "exits" a process by making its exit fd readable (calling the
callback the supervisor registered for it) and delivers a supervisor child's
messages through its fake pipe. The fake starter checks the one guarantee every
test shares: a node never has two processes at once.
"""
from __future__ import annotations

import signal
from typing import Callable, Dict, List, Optional

import attrs
import pytest

from orchestrator.engine.acks import Acknowledgements
from orchestrator.engine.child import EXIT_BOOT_FAILED
from orchestrator.engine.loop import Timer
from orchestrator.engine.messages import (Applied, ApplyCommand, Command, GaveUp, NodeEvent, Ready,
                                          RestartCommand, UpMessage)
from orchestrator.engine.supervisor import Supervisor
from orchestrator.spec.model import (Backoff, Intensity, NodeSpec, ReadyMode, Restart, StartMethod, Strategy,
                                     TreeContext)

TREE = TreeContext(name="t", start_method=StartMethod.FORK, plugins=())
TERM, KILL = signal.SIGTERM, signal.SIGKILL


# ----- fakes ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLoop:
    """Records what the supervisor asks of its loop; the test fires timers and fds."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.readers: Dict[int, Callable[[], None]] = {}
        self.writers: Dict[int, Callable[[], None]] = {}
        self.timers: List[Timer] = []
        self.signals: Dict[int, Callable[[], None]] = {}
        self.running = False
        self.stopped = False

    def add_reader(self, fd, callback) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd) -> None:
        self.readers.pop(fd, None)

    def set_writer(self, fd, callback) -> None:
        if callback is None:
            self.writers.pop(fd, None)
        else:
            self.writers[fd] = callback

    def call_later(self, delay, callback) -> Timer:
        timer = Timer(self.clock.now + max(0.0, delay), callback)
        self.timers.append(timer)
        return timer

    def on_signal(self, signum, callback) -> None:
        self.signals[signum] = callback

    def run(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.stopped = True

    def pending(self) -> List[Timer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def advance(self, seconds: float) -> None:
        """Turn the clock, running every timer that falls due, in deadline order."""
        self.clock.now += seconds
        while True:
            due = [timer for timer in self.pending() if timer.when <= self.clock.now]
            if not due:
                return
            timer = min(due, key=lambda each: each.when)
            self.timers.remove(timer)
            timer.callback()


class FakeConn:
    """A supervisor child's end of its pipe, as the parent sees it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.inbox: List[UpMessage] = []  # what the child sends up
        self.sent: List[Command] = []  # what the supervisor sends down

    def fileno(self) -> int:
        return self.fd

    def recv(self) -> UpMessage:
        if not self.inbox:
            raise EOFError
        return self.inbox.pop(0)

    def poll(self, timeout=0) -> bool:
        return bool(self.inbox)

    def send(self, message: Command) -> None:
        self.sent.append(message)


@attrs.define(eq=False)
class FakeProcess:
    """Running-like: what spawn.start_node returns, with the exit code the test picks."""

    path: str
    pid: int
    exit_fd: int
    uplink: Optional[FakeConn]
    output_fd: Optional[int] = None
    started_at: float = 0.0
    code: Optional[int] = None
    signalled: List[tuple] = attrs.field(factory=list)  # (order, signum) it was sent


class FakeStarter:
    """Hands out fake processes and records starts and signals; nothing is forked or sent."""

    def __init__(self) -> None:
        self.starts: List[str] = []  # paths, in start order
        self.signals: List[tuple] = []  # (path, signum, group), in order
        self.killed_groups: List[str] = []
        self.live: Dict[str, FakeProcess] = {}
        self.fail_next = 0  # starts to refuse with an OSError (EAGAIN)
        self._next = 100

    def start(self, node: NodeSpec, tree: TreeContext) -> FakeProcess:
        assert node.path not in self.live, f"a second process for {node.path}"
        if self.fail_next:
            self.fail_next -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self._next += 2
        uplink = FakeConn(self._next + 1) if node.is_supervisor else None
        process = FakeProcess(node.path, pid=self._next, exit_fd=self._next, uplink=uplink)
        self.live[node.path] = process
        self.starts.append(node.path)
        return process

    def reap(self, running: FakeProcess) -> int:
        assert running.code is not None, "reaped before it exited"
        del self.live[running.path]
        return running.code

    def signal(self, running: FakeProcess, signum: int, group: bool = True) -> None:
        running.signalled.append((len(self.signals), signum))
        self.signals.append((running.path, signum, group))

    def kill_group(self, running: FakeProcess) -> None:
        self.killed_groups.append(running.path)

    def terms(self) -> List[str]:
        return [path for path, signum, _ in self.signals if signum == TERM]


class RecordingUplink:
    """The Uplink protocol (engine/uplink.py), recording the messages a PipeUplink would send."""

    def __init__(self) -> None:
        self.sent: List[UpMessage] = []
        self.supervisor = None

    def attach(self, supervisor) -> None:
        self.supervisor = supervisor

    def send(self, message: UpMessage) -> None:
        self.sent.append(message)

    def of(self, kind: type) -> list:
        return [message for message in self.sent if isinstance(message, kind)]

    def states(self, path: str) -> List[str]:
        return [message.state for message in self.of(NodeEvent) if message.path == path]


class Harness:
    """A supervisor over fakes, and the hands that play the OS for it."""

    def __init__(self, node: NodeSpec) -> None:
        self.clock = FakeClock()
        self.loop = FakeLoop(self.clock)
        self.starter = FakeStarter()
        self.uplink = RecordingUplink()
        self.sup = Supervisor(TREE, node, self.uplink, self.loop, clock=self.clock, starter=self.starter)

    def begin(self) -> "Harness":
        self.sup.begin()
        return self

    def process(self, path: str) -> FakeProcess:
        return self.starter.live[path]

    def exit(self, path: str, code: int) -> None:
        """The process of `path` exits: its exit fd becomes readable."""
        process = self.process(path)
        process.code = code
        self.loop.readers[process.exit_fd]()

    def obey(self) -> None:
        """Every signalled process exits of its signal, one after another, as long as
        the supervisor keeps signalling (a stop sequence signals the next one only
        once the previous one is gone)."""
        while True:
            signalled = [process for process in self.starter.live.values() if process.signalled]
            if not signalled:
                return
            first = min(signalled, key=lambda process: process.signalled[0][0])
            self.exit(first.path, -first.signalled[-1][1])

    def message(self, path: str, message: UpMessage) -> None:
        """A supervisor child sends `message` up its pipe."""
        conn = self.process(path).uplink
        conn.inbox.append(message)
        self.loop.readers[conn.fileno()]()

    def command(self, message: Command) -> None:
        self.sup.command(message)

    def slot(self, name: str):
        return next(slot for slot in self.sup.slots if slot.spec.name == name)

    def reset(self) -> None:
        """Forget what was recorded so far (the processes stay)."""
        self.starter.starts.clear()
        self.starter.signals.clear()
        self.uplink.sent.clear()


def worker(path: str, **keys) -> NodeSpec:
    return NodeSpec(name=path.rpartition("/")[2], path=path, worker="t.sleep", **keys)


def sup(path: str, *children: NodeSpec, **keys) -> NodeSpec:
    return NodeSpec(name=path.rpartition("/")[2], path=path, children=children, **keys)


def root(*children: NodeSpec, **keys) -> NodeSpec:
    return sup("", *children, **keys)


def abcd(strategy: Strategy = Strategy.ONE_FOR_ONE, **keys) -> NodeSpec:
    return root(*(worker(name) for name in "abcd"), strategy=strategy, **keys)


def held(node: NodeSpec, *paths: str) -> NodeSpec:
    """`node` with the children at `paths` held (what the root sends for `orch stop`)."""
    return attrs.evolve(node, children=tuple(attrs.evolve(child, held=child.path in paths)
                                             for child in node.children))


# ----- starting and the basic restart -----------------------------------------------


def test_children_start_in_spec_order_and_the_supervisor_reports_ready():
    h = Harness(abcd()).begin()
    assert h.starter.starts == ["a", "b", "c", "d"]
    assert h.uplink.of(Ready) == [Ready("")]
    assert set(h.loop.signals) >= {TERM, signal.SIGINT, signal.SIGUSR1}
    assert h.uplink.supervisor is h.sup


def test_one_for_one_restarts_only_the_failed_child_at_once():
    h = Harness(abcd()).begin()
    h.reset()
    h.exit("b", 1)
    assert h.starter.starts == ["b"]
    assert h.starter.signals == []
    assert h.slot("b").restarts == 1 and h.slot("b").failures == 1
    assert h.uplink.states("b") == ["restarting", "running"]


def test_a_child_that_keeps_crashing_waits_out_its_backoff_on_the_clock():
    h = Harness(root(worker("a", backoff=Backoff(initial=0.5, cap=5.0)))).begin()
    h.exit("a", 1)  # the first restart is immediate
    h.reset()
    h.loop.advance(0.1)
    h.exit("a", 1)  # lived 0.1 s: a quick exit, so the next start waits
    assert h.starter.starts == [] and h.uplink.states("a") == ["backoff"]
    h.loop.advance(0.4)
    assert h.starter.starts == []
    h.loop.advance(0.1)
    assert h.starter.starts == ["a"]


def test_a_failed_fork_is_retried_from_a_timer():
    h = Harness(root(worker("a")))
    h.starter.fail_next = 1
    h.begin()
    assert h.starter.starts == [] and h.uplink.states("a") == ["backoff"]
    h.loop.advance(0.1)
    assert h.starter.starts == ["a"]


# ----- rounds ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, stopped, started", [
    (Strategy.ONE_FOR_ALL, ["d", "c", "a"], ["a", "b", "c", "d"]),
    (Strategy.REST_FOR_ONE, ["d", "c"], ["b", "c", "d"]),
], ids=["one_for_all", "rest_for_one"])
def test_round_stops_in_reverse_order_and_starts_in_spec_order(strategy, stopped, started):
    h = Harness(abcd(strategy)).begin()
    h.reset()
    h.exit("b", 1)
    # One at a time: the next is signalled only once the previous one is gone.
    assert h.starter.terms() == stopped[:1]
    h.obey()
    assert h.starter.terms() == stopped
    assert h.starter.starts == started
    assert all(path in h.starter.live for path in "abcd")


def test_round_kills_a_sibling_that_ignores_sigterm_after_its_stop_timeout():
    h = Harness(root(worker("a", stop_timeout=2.0), worker("b"), strategy=Strategy.ONE_FOR_ALL)).begin()
    h.reset()
    h.exit("b", 1)
    assert h.starter.signals == [("a", TERM, True)]
    h.loop.advance(1.9)
    assert len(h.starter.signals) == 1
    h.loop.advance(0.1)
    assert h.starter.signals[-1] == ("a", KILL, True)
    h.exit("a", -KILL)
    assert h.starter.starts == ["a", "b"]


def test_exit_of_a_sibling_during_a_round_is_not_lost():
    """rest_for_one: b fails and the round stops c; a (outside the round) fails meanwhile.
    Its failure is judged after the round, and then gets a round of its own."""
    h = Harness(root(worker("a"), worker("b"), worker("c"), strategy=Strategy.REST_FOR_ONE)).begin()
    h.reset()
    h.exit("b", 1)
    assert h.starter.terms() == ["c"]
    h.exit("a", 1)
    assert h.uplink.states("a") == ["restarting"]
    assert h.starter.starts == [], "nothing starts before the round's stops are done"
    h.obey()  # c goes; the round starts b, c; then a's own round stops c, b and starts a, b, c
    assert h.starter.starts == ["b", "c", "a", "b", "c"]
    assert h.starter.terms() == ["c", "c", "b"]
    assert all(path in h.starter.live for path in "abc")


def test_exit_of_a_child_the_round_will_start_is_not_double_started():
    """one_for_all: c fails and the round stops b, then a; a dies on its own first.
    The round starts it; its held-back failure then finds it running and does nothing."""
    h = Harness(root(worker("a"), worker("b"), worker("c"), strategy=Strategy.ONE_FOR_ALL)).begin()
    h.reset()
    h.exit("c", 1)
    assert h.starter.terms() == ["b"]
    h.exit("a", 1)
    h.obey()
    assert h.starter.starts == ["a", "b", "c"]
    assert h.starter.terms() == ["b"], "a was already gone: never signalled"
    assert h.loop.pending() == [], "no retry or second round left waiting"


def test_temporary_sibling_is_stopped_by_the_round_but_not_started_again():
    h = Harness(root(worker("a", restart=Restart.TEMPORARY), worker("b"),
                     strategy=Strategy.ONE_FOR_ALL)).begin()
    h.reset()
    h.exit("b", 1)
    h.obey()
    assert h.starter.terms() == ["a"]
    assert h.starter.starts == ["b"]


# ----- giving up ---------------------------------------------------------------------


def test_boot_failure_gives_up_at_once_and_stops_the_rest_in_reverse_order():
    h = Harness(abcd(intensity=Intensity(max_restarts=10, within=60.0))).begin()
    h.reset()
    h.exit("b", EXIT_BOOT_FAILED)
    assert h.sup.gave_up and "could not boot" in h.sup.gave_up
    assert h.uplink.of(GaveUp) == [GaveUp("", h.sup.gave_up)]
    h.obey()
    assert h.starter.terms() == ["d", "c", "a"]
    assert h.starter.starts == [], "restarting cannot help a worker that cannot boot"
    assert h.loop.stopped and h.sup.exit_code == 1


def test_boot_failure_of_a_supervisor_child_is_an_ordinary_failure():
    h = Harness(root(sup("s", worker("s/x")))).begin()
    h.message("s", Ready("s"))
    h.reset()
    h.exit("s", EXIT_BOOT_FAILED)
    assert h.sup.gave_up is None
    assert h.starter.starts == ["s"]


def test_more_restarts_than_the_intensity_allows_gives_up():
    """max_restarts=2 within 60 s: the third failure is one too many; the supervisor
    stops the others in reverse spec order and reports gave_up."""
    h = Harness(abcd(intensity=Intensity(max_restarts=2, within=60.0))).begin()
    for _ in range(2):
        h.loop.advance(10.0)  # longer than the backoff cap: each restart is immediate
        h.exit("a", 1)
    assert h.sup.gave_up is None and h.starter.starts.count("a") == 3
    h.reset()
    h.loop.advance(10.0)
    h.exit("a", 1)
    assert h.sup.gave_up == "a exited with code 1; more than 2 restarts within 60s"
    assert h.uplink.of(GaveUp) == [GaveUp("", h.sup.gave_up)]
    assert h.starter.starts == []
    h.obey()
    assert h.starter.terms() == ["d", "c", "b"]
    assert h.loop.stopped and h.sup.exit_code == 1
    assert h.uplink.of(Ready) == []


def test_restarts_older_than_the_window_do_not_count():
    h = Harness(abcd(intensity=Intensity(max_restarts=2, within=5.0))).begin()
    for _ in range(5):
        h.loop.advance(6.0)
        h.exit("a", 1)
    assert h.sup.gave_up is None
    assert h.starter.starts.count("a") == 6


# ----- held nodes and commands ----------------------------------------------------


def test_held_node_is_stopped_and_not_restarted_whatever_its_exit():
    h = Harness(abcd()).begin()
    h.reset()
    h.command(ApplyCommand(held(abcd(), "b"), TREE, 1))
    assert h.starter.terms() == ["b"]
    h.exit("b", 1)  # it crashed on the way down: still not restarted
    assert h.starter.starts == []
    assert h.uplink.states("b")[-1] == "stopped"
    assert h.uplink.of(Applied) == [Applied("", 1)]
    h.command(RestartCommand("b"))
    assert h.starter.starts == [] and h.starter.terms() == ["b"], "a held node ignores restart"
    h.command(ApplyCommand(abcd(), TREE, 2))  # orch start
    assert h.starter.starts == ["b"]
    assert h.uplink.of(Applied)[-1] == Applied("", 2)


def test_held_node_is_not_started_at_all():
    h = Harness(held(abcd(), "c")).begin()
    assert h.starter.starts == ["a", "b", "d"]
    assert h.uplink.of(Ready) == [Ready("")], "a held node counts as settled"


def test_restart_command_stops_then_starts_the_node_and_is_not_a_failure():
    h = Harness(abcd()).begin()
    h.reset()
    h.command(RestartCommand("c"))
    assert h.starter.terms() == ["c"]
    h.obey()
    assert h.starter.starts == ["c"]
    assert h.slot("c").failures == 0 and h.slot("c").restarts == 1


def test_restart_queued_behind_a_reload_acts_on_the_slot_the_reload_created():
    """Regression: a queued command used to capture the old slot and start a second
    process for the node. Now it looks the slot up when it runs; the old one is
    retired and never starts again."""
    h = Harness(abcd(Strategy.ONE_FOR_ALL)).begin()
    h.reset()
    h.exit("d", 1)  # a round begins: stopping c, b, a
    changed = attrs.evolve(abcd(Strategy.ONE_FOR_ALL), children=tuple(
        attrs.evolve(child, args={"v": 2}) if child.name == "b" else child
        for child in abcd().children))
    h.command(ApplyCommand(changed, TREE, 1))  # b's args changed: a new process
    h.command(RestartCommand("b"))
    old_slot = h.slot("b")
    h.obey()  # the round, then the reload, then the restart
    new_slot = h.slot("b")
    assert new_slot is not old_slot and old_slot.retired and old_slot.running is None
    assert h.starter.starts == ["a", "b", "c", "d", "b", "b"]
    assert h.starter.terms() == ["c", "b", "a", "b", "b"]
    assert new_slot.spec.args == {"v": 2} and new_slot.running is not None
    assert h.uplink.of(Applied) == [Applied("", 1)]


def test_commands_queue_in_order_behind_the_operation_that_runs():
    h = Harness(abcd()).begin()
    h.reset()
    h.command(RestartCommand("a"))
    h.command(RestartCommand("b"))
    assert h.starter.terms() == ["a"], "the second waits for the first"
    h.obey()
    assert h.starter.terms() == ["a", "b"]
    assert h.starter.starts == ["a", "b"]


def test_commands_for_a_deeper_node_go_down_to_the_supervisor_child_that_owns_it():
    h = Harness(root(sup("s", worker("s/x")), worker("w"))).begin()
    h.command(RestartCommand("s/x"))
    assert h.process("s").uplink.sent == [RestartCommand("s/x")]


# ----- reloads and their acknowledgement ------------------------------------------------


def two_level(x_args=None, extra=()) -> NodeSpec:
    return root(worker("w"), sup("s", worker("s/x", args=x_args or {})), *extra)


def test_reload_is_acknowledged_only_once_every_supervisor_child_has():
    h = Harness(two_level()).begin()
    assert h.starter.starts == ["w", "s"], "s is started; its subtree is not up yet"
    assert h.uplink.of(Ready) == []
    h.message("s", Ready("s"))
    assert h.uplink.of(Ready) == [Ready("")]
    h.reset()
    new = two_level(x_args={"v": 2}, extra=(worker("n"),))
    h.command(ApplyCommand(new, TREE, 7))
    assert h.process("s").uplink.sent == [ApplyCommand(new.children[1], TREE, 7)]
    assert h.starter.starts == ["n"], "our own part is done at once"
    assert h.uplink.of(Applied) == []
    h.message("s", Applied("s", 6))  # an older generation's word does not count
    assert h.uplink.of(Applied) == []
    h.message("s", Applied("s", 7))
    assert h.uplink.of(Applied) == [Applied("", 7)]
    h.message("s", Applied("s", 7))
    assert h.uplink.of(Applied) == [Applied("", 7)], "acknowledged once"


def test_a_supervisor_child_that_exits_while_applying_counts_as_done():
    h = Harness(two_level()).begin()
    h.message("s", Ready("s"))
    h.command(ApplyCommand(two_level(x_args={"v": 2}), TREE, 3))
    assert h.uplink.of(Applied) == []
    h.exit("s", 1)  # it restarts with the spec it was handed, or not at all
    assert h.uplink.of(Applied) == [Applied("", 3)]


def test_reload_replaces_removes_and_adds_touching_nothing_else():
    h = Harness(abcd()).begin()
    pids = {path: h.process(path).pid for path in "abcd"}
    h.reset()
    new = root(worker("a"), worker("b", args={"v": 2}), worker("d"), worker("e"))
    h.command(ApplyCommand(new, TREE, 1))
    assert h.starter.terms() == ["c"], "stops in reverse old order: c (removed), then b (replaced)"
    h.obey()
    assert h.starter.terms() == ["c", "b"]
    assert h.starter.starts == ["b", "e"]
    assert [h.process(path).pid for path in "ad"] == [pids["a"], pids["d"]]
    assert [slot.spec.name for slot in h.sup.slots] == ["a", "b", "d", "e"]
    assert h.slot("b").restarts == 1
    assert h.uplink.of(Applied) == [Applied("", 1)]


def test_reload_queued_behind_a_round_waits_for_it():
    h = Harness(abcd(Strategy.ONE_FOR_ALL)).begin()
    h.reset()
    h.exit("a", 1)
    h.command(ApplyCommand(root(worker("a"), worker("b"), worker("c"), strategy=Strategy.ONE_FOR_ALL),
               TREE, 1))
    assert h.starter.terms() == ["d"], "the round's first stop; the reload has not begun"
    h.obey()
    assert h.starter.starts == ["a", "b", "c", "d"]
    assert h.starter.terms() == ["d", "c", "b", "d"], "the reload stops d once the round is done"
    assert "d" not in h.starter.live
    assert h.uplink.of(Applied) == [Applied("", 1)]


# ----- stopping -----------------------------------------------------------------------


def test_shutdown_stops_in_reverse_order_and_a_second_request_kills_the_rest():
    h = Harness(abcd()).begin()
    h.reset()
    h.sup.shutdown()
    assert h.starter.terms() == ["d"]
    h.exit("d", -TERM)
    assert h.starter.terms() == ["d", "c"]
    h.sup.shutdown()  # a second Ctrl-C
    assert [(path, signum) for path, signum, _ in h.starter.signals[2:]] == [
        ("c", KILL), ("b", KILL), ("a", KILL)]
    h.obey()
    assert h.loop.stopped and h.sup.exit_code == 0
    assert h.starter.starts == []


def test_stop_signal_while_a_backoff_waits_cancels_the_restart():
    h = Harness(root(worker("a"), worker("b"))).begin()
    h.exit("a", 1)
    h.exit("a", 1)  # quick: its restart waits 0.1 s
    h.reset()
    h.loop.signals[TERM]()
    h.obey()
    h.loop.advance(10.0)
    assert h.starter.starts == []
    assert h.loop.stopped


def test_worker_helpers_are_killed_with_it_when_it_exits():
    h = Harness(root(worker("a"), sup("s", worker("s/x")))).begin()
    h.exit("a", 1)
    h.exit("s", 1)
    assert h.starter.killed_groups == ["a"], "a supervisor kills its own subtree"


# ----- Acknowledgements ------------------------------------------------------------------


def acks():
    done: List[int] = []
    return Acknowledgements(done.append), done


def test_acks_wait_for_the_local_part_and_every_child():
    tracker, done = acks()
    tracker.begin(1, ["s", "t"])
    tracker.child_applied("s", 1)
    tracker.local_done()
    assert done == []
    tracker.child_done("t")  # exited
    assert done == [1]


def test_acks_with_no_children_complete_when_the_local_part_does():
    tracker, done = acks()
    tracker.begin(4, [])
    assert done == []
    tracker.local_done()
    assert done == [4]


def test_acks_ignore_stale_generations_and_strangers_and_complete_once():
    tracker, done = acks()
    tracker.begin(2, ["s"])
    tracker.local_done()
    tracker.child_applied("s", 1)
    tracker.child_applied("x", 2)
    assert done == []
    tracker.child_applied("s", 2)
    tracker.child_applied("s", 2)
    tracker.child_done("s")
    assert done == [2]


def test_a_new_generation_supersedes_an_unfinished_one():
    tracker, done = acks()
    tracker.begin(1, ["s"])
    tracker.local_done()
    tracker.begin(2, ["t"])
    tracker.child_applied("s", 1)
    tracker.local_done()
    tracker.child_applied("t", 2)
    assert done == [2]


def test_nothing_is_acknowledged_before_any_generation():
    tracker, done = acks()
    tracker.local_done()
    tracker.child_done("s")
    assert done == []


# ----- readiness and watchdog over sd_notify (issue #9) ------------------------------


def notifying(path: str, **keys) -> NodeSpec:
    return worker(path, ready=ReadyMode.NOTIFY, **keys)


def notify(h: Harness, path: str, **fields: str) -> None:
    """The worker at `path` sends an sd_notify datagram (its own pid as the sender)."""
    h.sup._on_notify(h.process(path).pid, fields)


def test_a_notify_worker_holds_back_its_next_sibling_until_ready():
    h = Harness(root(notifying("a", ready_timeout=5.0), worker("b"))).begin()
    assert h.starter.starts == ["a"] and h.uplink.states("a") == ["starting"]
    assert h.uplink.of(Ready) == []
    notify(h, "a", READY="1")
    assert h.starter.starts == ["a", "b"]
    assert h.uplink.states("a") == ["starting", "running"]
    assert h.uplink.of(NodeEvent)[1].ready is True
    assert h.uplink.of(Ready) == [Ready("")]


def test_a_missed_ready_timeout_aborts_then_kills_and_counts_as_a_failure():
    h = Harness(root(notifying("a", ready_timeout=2.0, stop_timeout=1.0))).begin()
    h.loop.advance(1.9)
    assert h.starter.signals == []
    h.loop.advance(0.1)
    assert h.starter.signals == [("a", signal.SIGABRT, False)]
    h.loop.advance(1.0)  # still there after stop_timeout
    assert h.starter.signals[-1] == ("a", KILL, True)
    h.reset()
    h.exit("a", -KILL)
    assert h.slot("a").failures == 1 and h.starter.starts == ["a"]


def test_extend_timeout_pushes_the_ready_deadline_back():
    h = Harness(root(notifying("a", ready_timeout=1.0))).begin()
    h.loop.advance(0.5)
    notify(h, "a", EXTEND_TIMEOUT_USEC="3000000")  # 3 s from now: until 3.5
    h.loop.advance(2.9)
    assert h.starter.signals == []
    h.loop.advance(0.2)
    assert h.starter.signals == [("a", signal.SIGABRT, False)]


def test_heartbeats_keep_the_watchdog_from_firing_and_silence_aborts():
    h = Harness(root(notifying("a", watchdog=1.0))).begin()
    notify(h, "a", READY="1")
    for _ in range(5):
        h.loop.advance(0.8)
        notify(h, "a", WATCHDOG="1")
    assert h.starter.signals == []
    assert len(h.loop.pending()) == 1  # one timer per node, whatever the heartbeats
    h.loop.advance(1.0)
    assert h.starter.signals == [("a", signal.SIGABRT, False)]


def test_status_is_carried_up_and_strangers_are_ignored():
    h = Harness(root(notifying("a"))).begin()
    notify(h, "a", STATUS="warming up")
    assert h.uplink.of(NodeEvent)[-1].status == "warming up"
    h.sup._on_notify(999999999, {"READY": "1"})  # no such process, none of ours
    assert h.sup.notify_ignored == 1 and not h.slot("a").ready


def test_the_notify_socket_parses_datagrams():
    from orchestrator.engine.notify import parse

    assert parse(b"READY=1\nSTATUS=a=b\nnoise\n\nWATCHDOG=1") == {"READY": "1", "STATUS": "a=b", "WATCHDOG": "1"}
