"""The root answers "wait until settled" itself: `orch reload` and `orch restart|stop|start`
make one request each (counted by the root, shown by `ping`), a client that hangs up while
it waits is forgotten, and a wait past its deadline is answered with the state as it is."""
from __future__ import annotations

import json
import signal
import socket
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import RunningTree, gone, wait_for

PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "testworkers.py"

pytestmark = pytest.mark.timeout(40)

# s1/slow ignores SIGTERM for STUCK seconds: `orch stop s1/slow` keeps the tree unsettled
# that long, while s2 (and the root supervisor) are free to restart what fails.
STUCK = 30


def tree_text(name: str, label: str = "v1") -> str:
    return f'name = "{name}"\nplugins = ["{PLUGIN}"]\n' + textwrap.dedent(f'''
        [[children]]
        name = "a"
        worker = "t.say"
        args = {{ text = "{label}" }}
        [[children]]
        name = "s1"
          [[children.children]]
          name = "slow"
          worker = "t.ignore_term"
          stop_timeout = {STUCK}
        [[children]]
        name = "s2"
          [[children.children]]
          name = "victim"
          worker = "t.sleep"
    ''')


@pytest.fixture
def tree(orch_tree, monkeypatch) -> RunningTree:
    running = orch_tree(tree_text("settle"))
    monkeypatch.setenv(control.ENV_RUN_DIR, running.env[control.ENV_RUN_DIR])
    return running


def ping(tree: RunningTree) -> dict:
    reply = control.request(tree.name, {"cmd": "ping"})
    assert reply["ok"], reply
    return reply


def requests_during(tree: RunningTree, action) -> dict:
    """The control requests the root answered while `action()` ran, by command (nonzero only)."""
    before = ping(tree)["requests"]
    action()
    after = ping(tree)["requests"]
    after["ping"] -= 1  # the ping that asked
    return {command: count - before.get(command, 0) for command, count in after.items()
            if count != before.get(command, 0)}


def ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def connect(tree: RunningTree) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(Path(tree.env[control.ENV_RUN_DIR]) / tree.name / control.SOCKET_NAME))
    return sock


def ask(tree: RunningTree, request: dict) -> dict:
    with connect(tree) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())


def node(nodes, path: str) -> dict:
    return next(row for row in nodes if row["path"] == path)


# ----- (a) one request per command ---------------------------------------------------------


def test_restart_stop_start_make_one_request_each(tree):
    old = tree.node("s2/victim")["pid"]
    results = []
    counted = requests_during(tree, lambda: results.append(tree.orch("restart", "s2/victim", "--tree", tree.name)))
    ok(results[0])
    assert counted == {"restart": 1}, counted
    new = tree.node("s2/victim")
    assert new["state"] == "running" and new["pid"] != old and gone(old)
    assert results[0].stderr == f"orch: settle/s2/victim: running (pid {new['pid']})\n"

    for command in ("stop", "start"):
        counted = requests_during(tree, lambda: results.append(tree.orch(command, "a", "--tree", tree.name)))
        ok(results[-1])
        assert counted == {command: 1}, (command, counted)
    assert tree.node("a")["state"] == "running"


def test_reload_makes_one_request_and_keeps_its_output(tree):
    before = tree.pids()
    edited = tree.file.with_name("edited.toml")
    edited.write_text(tree_text("settle", label="v2"))
    results = []
    counted = requests_during(tree, lambda: results.append(tree.orch("reload", str(edited))))
    ok(results[0])
    assert counted == {"reload": 1}, counted
    assert results[0].stdout == "~ restart a (args)\n1 changes applied; 5 nodes unchanged\n"
    after = tree.pids()
    assert after["a"] != before["a"] and gone(before["a"])
    assert {path: pid for path, pid in after.items() if path != "a"} == \
        {path: pid for path, pid in before.items() if path != "a"}


def test_a_reload_whose_new_node_crashes_fails_in_one_request(tree):
    crashing = tree_text("settle") + textwrap.dedent('''
        [[children]]
        name = "bad"
        worker = "t.exit"
        args = { code = 1 }
        restart = "on-failure"
    ''')
    edited = tree.file.with_name("crashing.toml")
    edited.write_text(crashing)
    results = []
    counted = requests_during(tree, lambda: results.append(tree.orch("reload", str(edited))))
    assert results[0].returncode == 1, results[0].stderr
    assert "reload applied, but not everything runs: bad (" in results[0].stderr
    assert counted == {"reload": 1}, counted


# ----- (b) a waiting client that hangs up ------------------------------------------------------


def test_a_waiting_client_that_hangs_up_is_forgotten_and_the_root_stays_healthy(tree):
    waiting = connect(tree)
    waiting.sendall(b'{"cmd": "stop", "path": "s1/slow", "wait": true}\n')
    tree.wait_for(lambda: ping(tree)["waiting"] == 1, message="the stop to wait in the root")
    tree.wait_for(lambda: tree.node("s1/slow")["state"] == "stopping", message="s1/slow stuck stopping")
    assert ping(tree)["waiting"] == 1
    waiting.close()
    tree.wait_for(lambda: ping(tree)["waiting"] == 0, message="the root to forget the wait")
    assert ping(tree)["refused"]["internal_error"] == 0

    s2 = psutil.Process(tree.node("s2")["pid"])
    victim = tree.node("s2/victim")["pid"]
    killed_at = time.monotonic()
    psutil.Process(victim).send_signal(signal.SIGKILL)
    replaced = wait_for(lambda: [child for child in s2.children() if child.pid != victim], timeout=5,
                        message="a new child of s2")
    took = time.monotonic() - killed_at
    assert took < 2.0, f"the victim was replaced after {took:.2f}s"
    tree.wait_for(lambda: tree.node("s2/victim")["pid"] == replaced[0].pid, message="the table to show it")


# ----- (c) a deadline answers with the state as it is --------------------------------------------


def test_a_wait_that_cannot_settle_times_out_with_the_state_as_it_is(tree):
    started = time.monotonic()
    reply = ask(tree, {"cmd": "stop", "path": "s1/slow", "wait": True, "timeout": 1.0})
    took = time.monotonic() - started
    assert reply["ok"] and reply["timed_out"] is True, reply
    assert 1.0 <= took < 5.0, took
    assert (reply["node"]["state"], reply["wanted"]) == ("stopping", False)
    assert psutil.Process(reply["node"]["pid"]).is_running()

    reply = ask(tree, {"cmd": "wait", "timeout": 0.3})
    assert reply["timed_out"] is True and node(reply["nodes"], "s1/slow")["state"] == "stopping"
    assert ping(tree)["waiting"] == 0


def test_a_wait_on_a_settled_tree_answers_at_once(tree):
    reply = ask(tree, {"cmd": "wait"})
    assert reply["ok"] and "timed_out" not in reply, reply
    assert all(row["state"] == "running" for row in reply["nodes"] if row["kind"] != "helper")
