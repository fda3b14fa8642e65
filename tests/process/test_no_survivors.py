"""No process that descends from a tree outlives it, however the tree ends and however its
helpers hide: same-group, double-forked, `setsid`, SIGTERM-ignoring, with children of their own.

Every command a test's tree runs carries a mark in its environment (exec and setsid keep
it), so a survivor is found wherever it was reparented, pid 1 included, and killed by pid
at teardown even when the test fails. The Python nodes rewrite that memory with their
titles, so they are checked by pid.
"""
import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import psutil
import pytest

from orchestrator.engine import titles
from orchestrator.testing import descendants, gone, json_tree, run_orch, wait_for
from tests.helpers import ORCH_ARGV, kill_by_pid, lines
from tests.helpers import marked as marked_processes

MARK = "ORCH_TEST_NO_SURVIVORS"
# Tree names unique to this session: a root evicts processes titled as its tree's nodes.
UNIQUE = f"ns{os.getpid()}"
# From the end of the tree (signal sent, `orch down` returned) until nothing of it is left.
DEADLINE = 5.0

HELPER = '''#!/bin/sh
# A helper left behind by a worker: records "LABEL PID", then sleeps. MODE: plain, ignore
# (SIGTERM ignored, through the exec), parent (forks two helpers of its own first).
echo "$2 $$" >> "$1"
case "$3" in
  ignore) trap '' TERM ;;
  parent) "$0" "$1" "$2/child" plain & "$0" "$1" "$2/child" plain & ;;
esac
exec sleep 1001
'''
# Worker commands by helper style: {h} runs the helper script with its pidfile and label.
STYLES = {
    "background": "{h} plain & exec sleep 1002",  # same process group as the worker
    "double-fork": "({h} plain &); exec sleep 1002",  # orphaned at once
    "setsid": "setsid {h} plain & exec sleep 1002",  # left the worker's session
    "ignores-term": "{h} ignore & exec sleep 1002",  # same group, SIGTERM ignored
    "session-parent": "setsid {h} parent & exec sleep 1002",  # a new session with children
}
HELPERS_PER_PLACEMENT = 7  # one per style, two more for session-parent's children


# ----- the mark: find and kill whatever a test started, wherever it went ---------------


def marked(mark: str):
    """Live processes (not zombies) whose environment carries `mark`."""
    return list(marked_processes(MARK, mark))


@pytest.fixture
def mark(orch_env, tmp_path):
    """Marks every process started with `orch_env`; kills the marked ones left at teardown.

    Request it before `orch_tree`: it is torn down after the trees are killed, and helpers
    that escaped to pid 1 are no descendants the tree fixture could find.
    """
    value = str(tmp_path)
    orch_env[MARK] = value
    yield value
    kill_by_pid(marked(value))


def describe(procs) -> str:
    rows = []
    for proc in procs:
        try:
            rows.append(f"pid {proc.pid} (ppid {proc.ppid()}, pgid {os.getpgid(proc.pid)}, "
                        f"sid {os.getsid(proc.pid)}): {' '.join(proc.cmdline())}")
        except (psutil.Error, OSError):
            continue
    return "\n".join(rows)


def assert_nothing_left(mark: str, helpers: dict, output: str, nodes: Optional[dict] = None) -> None:
    """Wait for every marked process and every node (pid -> create time) to be gone; then
    check the recorded helpers too."""
    last = []

    def quiet():
        last[:] = marked(mark) + [psutil.Process(pid) for pid, created in (nodes or {}).items()
                                  if not gone(pid, created)]
        return not last
    try:
        wait_for(quiet, timeout=DEADLINE, message="every process of the tree gone")
    except AssertionError:
        raise AssertionError(f"still alive {DEADLINE:g}s after the tree ended (ppid 1: escaped "
                             f"to init):\n{describe(last)}\noutput:\n{output}") from None
    alive = [label for label, (pid, created) in helpers.items() if not gone(pid, created)]
    assert alive == [], f"helpers still alive: {alive}"


# ----- the tree -----------------------------------------------------------------------


def tree_text(tmp_path: Path) -> str:
    script = tmp_path / "helper.sh"
    script.write_text(HELPER)
    script.chmod(0o755)
    pidfile = tmp_path / "helpers"

    def worker(name: str, label: str, indent: str) -> str:
        command = STYLES[name].format(h=f"{script} {pidfile} {label}")
        table = "children.children" if indent else "children"
        return (f'{indent}[[{table}]]\n{indent}name = "{name}"\n'
                f'{indent}worker = "orch.exec"\n{indent}stop_timeout = 1\n'
                f'{indent}args = {{ argv = ["sh", "-c", {json.dumps(command)}] }}\n')
    text = f'name = "{UNIQUE}"\n'
    text += "".join(worker(name, name, "") for name in STYLES)
    text += '[[children]]\nname = "sup"\n'
    text += "".join(worker(name, f"sup/{name}", "  ") for name in STYLES)
    return text


def recorded_helpers(tmp_path: Path) -> dict:
    """label -> (pid, create time) of every helper that has written its line."""
    found = {}
    for number, line in enumerate(lines(tmp_path / "helpers")):
        label, pid = line.split()
        try:
            found[f"{label}#{number}"] = (int(pid), psutil.Process(int(pid)).create_time())
        except psutil.NoSuchProcess:
            found[f"{label}#{number}"] = (int(pid), None)  # stopped already (the root adopted it)
    return found


def start(orch_tree, tmp_path):
    tree = orch_tree(tree_text(tmp_path))
    helpers = tree.wait_for(lambda: len(found := recorded_helpers(tmp_path)) == 2 * HELPERS_PER_PLACEMENT
                            and found, message="every helper started")
    return tree, helpers


# ----- how a tree ends ----------------------------------------------------------------------


def orch_down(tree):
    started = time.monotonic()
    result = tree.orch("down", tree.name, timeout=30)
    assert result.returncode == 0, result.stderr + tree.read_output()
    assert time.monotonic() - started < DEADLINE, f"`orch down` took {time.monotonic() - started:.1f}s"
    assert tree.wait_exit() == 0


def sigterm_to_orch_up(tree):
    os.kill(tree.pid, signal.SIGTERM)
    assert tree.wait_exit() == 0, tree.read_output()


def sigkill_the_guardian(tree):
    os.kill(tree.pid, signal.SIGKILL)
    assert tree.wait_exit() == -signal.SIGKILL


def sigkill_the_root(tree):
    os.kill(tree.root_pid, signal.SIGKILL)
    assert tree.wait_exit() == 1, tree.read_output()
    assert f"(pid {tree.root_pid}) was killed by SIGKILL" in tree.read_output()


ENDINGS = [orch_down, sigterm_to_orch_up, sigkill_the_guardian, sigkill_the_root]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("end", ENDINGS, ids=[end.__name__ for end in ENDINGS])
def test_no_process_of_the_tree_survives_its_end(mark, orch_tree, tmp_path, end):
    """Each helper style both directly under the root and under a supervisor, in one tree."""
    tree, helpers = start(orch_tree, tmp_path)
    root = psutil.Process(tree.root_pid)
    assert root.ppid() == tree.pid
    assert {label.split("#")[0] for label in helpers} >= {f"{prefix}{style}" for style in STYLES
                                                          for prefix in ("", "sup/")}
    assert len(marked(mark)) >= 2 * len(STYLES), "the mark reaches every worker's command"
    nodes = {proc.pid: proc.create_time() for proc in descendants(tree.pid)}

    end(tree)

    assert_nothing_left(mark, helpers, tree.read_output(), nodes)


# ----- the guardian itself -----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_detached_guardian_holds_nothing_but_stdio_and_orch_down_waits_for_it(mark, orch_env, tmp_path):
    file = tmp_path / "tree.toml"
    file.write_text(tree_text(tmp_path))
    up = run_orch("up", "--detach", str(file), env=orch_env, timeout=30)
    assert up.returncode == 0, up.stderr
    root = psutil.Process(int(up.stdout.strip()))
    guardian = root.parent()
    try:
        check_detached(mark, orch_env, tmp_path, guardian)
    finally:
        kill_by_pid([guardian, root])  # the Python nodes carry no mark (their titles overwrite it)


def check_detached(mark, orch_env, tmp_path, guardian):
    helpers = wait_for(lambda: len(found := recorded_helpers(tmp_path)) == 2 * HELPERS_PER_PLACEMENT
                       and found, message="every helper started")
    assert " ".join(guardian.cmdline()).strip() == f"orch: {UNIQUE} (guardian)"
    assert sorted(os.listdir(f"/proc/{guardian.pid}/fd")) == ["0", "1", "2"], "the ready fd is closed"
    assert {node["pid"] for node in json_tree(orch_env, UNIQUE)}.isdisjoint({guardian.pid}), \
        "the guardian is no node"
    assert guardian.pid not in {proc.pid for proc in titles.claimants(UNIQUE)}, \
        "a root starting later must never evict the guardian as a leftover node"

    down = run_orch("down", UNIQUE, env=orch_env, timeout=30)
    assert down.returncode == 0, down.stderr
    assert gone(guardian.pid, guardian.create_time()), "`orch down` returned before the guardian exited"
    assert_nothing_left(mark, helpers, down.stderr)


def ctrl_c_tree(armed: Path, stop_timeout: float) -> str:
    return f'''
name = "{UNIQUE}"
[[children]]
name = "stubborn"
worker = "orch.exec"
stop_timeout = {stop_timeout}
args = {{ argv = ["sh", "-c", "trap '' TERM; setsid sleep 1001 & echo $! > {armed}; exec sleep 1002"] }}
'''


@pytest.mark.timeout(30)
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_at_the_terminal_counts_once(mark, orch_env, tmp_path, presses):
    """The terminal sends SIGINT to the foreground job, the guardian (the root has a process
    group of its own): it is passed on once, or one Ctrl-C would be the "second Ctrl-C"
    that kills at once; two presses are two."""
    file = tmp_path / "tree.toml"
    armed = tmp_path / "armed"
    file.write_text(ctrl_c_tree(armed, stop_timeout=1 if presses == 1 else 30))
    master, slave = pty.openpty()
    output = tmp_path / "out"
    with open(output, "wb") as out:
        # setsid --ctty: a session of its own whose controlling terminal is the pty on stdin,
        # so the guardian is its foreground process group.
        up = subprocess.Popen(["setsid", "--ctty", *ORCH_ARGV, "up", str(file)],
                              stdin=slave, stdout=out, stderr=subprocess.STDOUT, env=orch_env)
    os.close(slave)
    try:
        wait_for(lambda: armed.exists() and f"tree {UNIQUE!r} is up" in output.read_text(),
                 message="the tree up, its worker ignoring SIGTERM")
        os.write(master, b"\x03")
        if presses == 2:
            wait_for(lambda: "stopping tree" in output.read_text(), message="the first Ctrl-C seen")
            os.write(master, b"\x03")
        code = up.wait(timeout=15)
    finally:
        os.close(master)
        if up.poll() is None:
            kill_by_pid([psutil.Process(up.pid)])  # the guardian and everything below it
            up.wait()
    text = output.read_text()
    assert code == 0, text
    if presses == 1:
        assert "second stop request" not in text, text
        assert "stubborn did not stop within 1s; sending SIGKILL" in text, text
    else:
        assert "second stop request; killing the remaining processes" in text, text
    assert_nothing_left(mark, {}, text)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_whole_process_group_counts_once(orch_env, tmp_path, signum):
    """systemd's control-group stop and a shell's SIGHUP to its jobs signal every process
    of the `orch up` group: the root must see one stop (graceful) or one reload, not two."""
    file = tmp_path / "tree.toml"
    file.write_text('name = "pgrp"\n[[children]]\nname = "w"\nworker = "orch.sleep"\n')
    output = tmp_path / "out"
    with open(output, "wb") as out:
        # A session of its own, as a shell's job or a service has: the group signal
        # must not reach pytest.
        up = subprocess.Popen([*ORCH_ARGV, "up", str(file)], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, env=orch_env, start_new_session=True)
    try:
        wait_for(lambda: "tree 'pgrp' is up" in output.read_text(), message="the tree up")
        os.killpg(up.pid, signum)
        if signum == signal.SIGHUP:
            wait_for(lambda: "reloading tree 'pgrp'" in output.read_text(), message="the reload")
            os.kill(up.pid, signal.SIGTERM)  # seen after any second reload would have been
        assert up.wait(timeout=15) == 0, output.read_text()
    finally:
        if up.poll() is None:
            kill_by_pid([psutil.Process(up.pid)])
            up.wait()
    text = output.read_text()
    assert "second stop request" not in text, text
    assert text.count("reloading tree 'pgrp'") == (1 if signum == signal.SIGHUP else 0), text
