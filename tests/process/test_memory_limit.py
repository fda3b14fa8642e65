"""`max_memory` (issue #9): a node whose RSS passes its limit is stopped, restarted, counted as a failure."""
from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from orchestrator.testing import wait_for
from tests.helpers import PLUGINS, tree_text

pytestmark = pytest.mark.timeout(40)


def text(name: str, body: str) -> str:
    return tree_text(name, body, plugins=(PLUGINS / "envworkers.py", PLUGINS / "testworkers.py"))


def starts(log: Path) -> list:
    return log.read_text().splitlines() if log.exists() else []


def test_a_worker_growing_past_max_memory_is_stopped_restarted_and_counted(orch_tree, tmp_path):
    log = tmp_path / "grow.log"
    tree = orch_tree(text("memgrow", f'''
memory_check = 0.2
[[children]]
name = "hog"
worker = "e.grow"
args = {{ log = "{log}" }}
max_memory = "60MB"
restart = "on-failure"
[[children]]
name = "calm"
worker = "t.sleep"
max_memory = "1GB"
'''))
    calm = tree.node("calm")["pid"]
    wait_for(lambda: len(starts(log)) >= 2, timeout=20)
    first = int(starts(log)[0].split()[1])
    hog = wait_for(lambda: (lambda node: node if node["state"] == "running" and node["pid"] != first
                            else None)(tree.node("hog")))
    assert hog["failures"] == 1 and hog["restarts"] == 1
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert tree.node("calm")["pid"] == calm and tree.node("calm")["failures"] == 0
    output = wait_for(lambda: "memory_limit" in tree.read_output() and tree.read_output())
    line = next(line for line in output.splitlines() if "memory_limit" in line)
    assert "hog" in line and "max_memory 60.0MB" in line, line


def test_a_helper_in_the_workers_group_counts_toward_its_sum(orch_tree, tmp_path):
    log = tmp_path / "helper.log"
    # The worker itself stays small; its helper holds 80MB.
    tree = orch_tree(text("memhelper", f'''
memory_check = 0.2
[[children]]
name = "w"
worker = "e.helper_hog"
args = {{ log = "{log}", size = {80 << 20} }}
max_memory = "50MB"
restart = "never"
'''), wait=False)
    wait_for(lambda: starts(log), timeout=20)
    worker, helper = (int(pid) for pid in starts(log)[0].split()[1:])
    node = wait_for(lambda: (lambda n: n if n["state"] == "failed" else None)(tree.node("w")), timeout=20)
    assert node["failures"] == 1
    for pid in (worker, helper):
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    assert "w: memory_limit exceeded" in tree.read_output()


def test_a_supervisors_limit_covers_its_subtree(orch_tree, tmp_path):
    log = tmp_path / "sub.log"
    tree = orch_tree(text("memsub", f'''
memory_check = 0.2
[[children]]
name = "sup"
max_memory = "300MB"
  [[children.children]]
  name = "small"
  worker = "t.sleep"
  [[children.children]]
  name = "deep"
    [[children.children.children]]
    name = "hog"
    worker = "e.grow"
    args = {{ log = "{log}", step = {8 << 20} }}
'''))
    sup = tree.node("sup")["pid"]
    node = wait_for(lambda: (lambda n: n if n["pid"] not in (None, sup) and n["state"] == "running" else None)(
        tree.node("sup")), timeout=30)
    assert node["failures"] == 1
    assert "sup: memory_limit exceeded" in tree.read_output()


def test_max_memory_values_are_checked_and_located(tmp_path):
    from orchestrator.errors import InvalidInput
    from orchestrator.spec.validate import load_tree

    file = tmp_path / "bad.toml"
    file.write_text(text("membad", '''memory_check = 0
max_memory = "1GB"
[[children]]
name = "a"
worker = "t.sleep"
max_memory = "12 parsecs"
[[children]]
name = "b"
worker = "t.sleep"
max_memory = true
[[children]]
name = "c"
worker = "t.sleep"
max_memory = "10MB"
memory_check = 1.0
[[children]]
name = "d"
worker = "t.sleep"
max_memory = 1048576
'''))
    with pytest.raises(InvalidInput) as raised:
        load_tree(str(file))
    shown = str(raised.value)
    assert f"{file}:3: (root): 'memory_check' must be > 0 seconds, got 0" in shown
    assert f"{file}:4: (root): 'max_memory' does not apply to the root" in shown
    assert f"{file}:8: a: 'max_memory' must be a size like \"512KB\", \"10MB\" or \"1GB\"" in shown
    assert f"{file}:12: b: 'max_memory' must be a number of bytes" in shown
    assert f"{file}:17: c: 'memory_check' is only for supervisors" in shown
    assert ":21:" not in shown
    file.write_text(text("memok", '[[children]]\nname = "d"\nworker = "t.sleep"\nmax_memory = "10MB"\n'))
    assert next(node for node in load_tree(str(file)).nodes() if node.name == "d").max_memory == 10 << 20


def test_a_supervisor_is_judged_on_the_subtree_total_its_child_reports(orch_tree, tmp_path):
    # Both supervisors are limited, so `inner` reports its subtree to `sup`, which adds its own
    # and reports to the root: the hog two levels down is read once per check, by `inner`.
    log = tmp_path / "reports.log"
    tree = orch_tree(text("memreport", f'''
memory_check = 0.2
[[children]]
name = "sup"
max_memory = "250MB"
memory_check = 0.2
  [[children.children]]
  name = "calm"
  worker = "t.sleep"
  [[children.children]]
  name = "inner"
  max_memory = "4GB"
  memory_check = 0.2
    [[children.children.children]]
    name = "hog"
    worker = "e.grow"
    args = {{ log = "{log}", step = {8 << 20} }}
'''))
    sup = tree.node("sup")["pid"]
    node = wait_for(lambda: (lambda n: n if n["pid"] not in (None, sup) and n["state"] == "running" else None)(
        tree.node("sup")), timeout=30)
    assert node["failures"] == 1 and node["restarts"] == 1
    assert not psutil.pid_exists(sup) or psutil.Process(sup).status() == psutil.STATUS_ZOMBIE
    output = wait_for(lambda: "memory_limit" in tree.read_output() and tree.read_output())
    lines = [line for line in output.splitlines() if "memory_limit exceeded" in line]
    assert lines and all("sup: memory_limit exceeded" in line for line in lines), lines
    assert "max_memory 250.0MB" in lines[0], lines
    assert tree.node("sup/inner")["failures"] == 0  # restarted with its parent, never judged itself


def test_a_workers_helper_counts_toward_its_supervisors_subtree(orch_tree, tmp_path):
    log = tmp_path / "subhelper.log"
    # Neither the supervisor nor its worker is big (well under 150MB together); the helper
    # the worker forked into its group holds 200MB: only the group's sum passes the limit.
    tree = orch_tree(text("memsubhelper", f'''
memory_check = 0.2
[[children]]
name = "sup"
max_memory = "150MB"
memory_check = 0.2
restart = "never"
  [[children.children]]
  name = "w"
  worker = "e.helper_hog"
  args = {{ log = "{log}", size = {200 << 20} }}
'''), wait=False)
    wait_for(lambda: starts(log), timeout=20)
    worker, helper = (int(pid) for pid in starts(log)[0].split()[1:])
    node = wait_for(lambda: (lambda n: n if n["state"] == "failed" else None)(tree.node("sup")), timeout=20)
    assert node["failures"] == 1
    for pid in (worker, helper):
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    output = tree.read_output()
    assert "sup: memory_limit exceeded" in output and "sup/w: memory_limit" not in output


class _Loop:
    def __init__(self) -> None:
        self.timers: list = []

    def call_later(self, delay, callback):
        from orchestrator.engine.loop import Timer

        timer = Timer(delay, callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        for timer in [timer for timer in self.timers if not timer.cancelled]:
            self.timers.remove(timer)
            timer.callback()


class _Running:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_reports_are_consumed_judged_on_receipt_and_not_trusted_once_stale():
    """The guard alone, with a fake loop and clock: what a supervisor does with its children's
    `MemoryReport`s, and what it reports up itself."""
    import subprocess
    import sys

    from orchestrator.engine.memory_guard import STALE_INTERVALS, STALE_SLACK, MemoryGuard
    from orchestrator.engine.messages import MemoryReport, NodeEvent
    from orchestrator.engine.slot import Slot
    from orchestrator.engine.states import NodeState
    from orchestrator.spec.model import NodeSpec

    def supervisor(name: str, limit) -> NodeSpec:
        return NodeSpec(name=name, path=f"top/{name}", max_memory=limit, memory_check=1.0,
                        children=(NodeSpec(name="w", path=f"top/{name}/w", worker="t.sleep"),))

    # A real process (a group leader) for the one child whose subtree gets measured from here.
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        wait_for(lambda: psutil.Process(stuck.pid).memory_info().rss > 5 << 20)
        noisy, quiet, plain = Slot(supervisor("noisy", 5 << 20)), Slot(supervisor("quiet", 5 << 20)), \
            Slot(supervisor("plain", None))
        noisy.running, quiet.running, plain.running = _Running(10 ** 9), _Running(stuck.pid), _Running(10 ** 9 + 1)
        top = NodeSpec(name="top", path="top", max_memory=1 << 40, memory_check=1.0,
                       children=(noisy.spec, quiet.spec, plain.spec))
        now = [100.0]
        loop, over, sent = _Loop(), [], []
        guard = MemoryGuard(loop, lambda: now[0], lambda: [noisy, quiet, plain],  # type: ignore[arg-type]
                            lambda slot, why: over.append((slot.spec.name, why)), sent.append)
        guard.configure(top)

        # Consumed, and judged when it arrives: once, then the process is being stopped.
        assert guard.received(noisy, MemoryReport("top/noisy", 6 << 20))
        assert guard.received(noisy, MemoryReport("top/noisy", 7 << 20))
        assert [name for name, _ in over] == ["noisy"] and "memory_limit exceeded" in over[0][1]
        # A child without a limit does not report (its subtree is walked from here, when we report):
        # a stray report is consumed all the same, never forwarded.
        assert guard.received(plain, MemoryReport("top/plain", 1 << 20))
        assert not guard.received(quiet, NodeEvent("top/quiet/w", None, NodeState.STOPPED, 0, None, 0))

        # `quiet` reports a small figure: trusted while fresh, so its process is not read here
        # (it would be over: its RSS passes 5MB).
        assert guard.received(quiet, MemoryReport("top/quiet", 1 << 20))
        now[0] += 1.0
        loop.fire()
        assert [name for name, _ in over] == ["noisy"]
        assert len(sent) == 1 and sent[0].path == "top" and sent[0].rss >= (7 + 1) << 20

        # It stops reporting: past the staleness window its subtree is measured from here.
        now[0] += STALE_INTERVALS * 1.0 + STALE_SLACK + 0.1
        guard.received(noisy, MemoryReport("top/noisy", 7 << 20))
        loop.fire()
        assert [name for name, _ in over] == ["noisy", "quiet"]
        assert "RSS" in over[1][1] and "max_memory 5.0MB" in over[1][1]
        assert len(sent) == 2 and sent[1].rss >= psutil.Process(stuck.pid).memory_info().rss // 2

        guard.stop()
        assert not [timer for timer in loop.timers if not timer.cancelled]
    finally:
        stuck.kill()
        stuck.wait()


def test_the_reader_keeps_a_leaders_files_open_and_closes_them_once_it_is_gone():
    import os
    import signal
    import subprocess
    import sys

    from orchestrator.engine.memory import GroupReader

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    # A group leader and a helper it forked into its group: both count.
    leader = subprocess.Popen([sys.executable, "-c", "import os, time; os.fork(); time.sleep(60)"],
                              start_new_session=True)
    try:
        helper = wait_for(lambda: psutil.Process(leader.pid).children()).pop()
        before, reader = open_fds(), GroupReader()
        expected = psutil.Process(leader.pid).memory_info().rss + helper.memory_info().rss
        for _ in range(3):  # the first opens the leader's files, the next ones pread them
            assert abs(reader.rss({leader.pid: "w"})["w"] - expected) < expected // 10
        assert open_fds() == before + 2
        alone = psutil.Process(leader.pid).memory_info().rss
        assert abs(reader.rss({leader.pid: "w"}, skip={helper.pid})["w"] - alone) < alone // 10  # helper skipped
        assert reader.rss({leader.pid: "w"}, keep=frozenset())["w"] > alone // 2 and open_fds() == before
        reader.rss({leader.pid: "w"})
        assert reader.rss({}) == {} and open_fds() == before  # no longer measured: closed
        reader.rss({leader.pid: "w"})
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
        assert reader.rss({leader.pid: "w"}) == {"w": 0} and open_fds() == before  # gone: closed
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except OSError:
            pass
        leader.wait()
