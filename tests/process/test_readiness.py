"""Readiness and heartbeat over sd_notify (issue #9), against real processes.

Workers with `ready = "notify"` count as started on READY=1; a missed
`ready_timeout` or `watchdog` gets SIGABRT (faulthandler prints the stack), then
the node's restart rule applies as for any crash.
"""
import json
import shutil
import socket
import sys
from pathlib import Path

import psutil
import pytest

from orchestrator.testing import json_tree, run_orch, wait_for
from tests.helpers import PLUGINS, control_request, kill_by_pid, toml_value, tree_text

NOTIFY = PLUGINS / "notifyworkers.py"
HEAD = tree_text("ready", "", plugins=[NOTIFY])


NODE_KEYS = {"ready", "ready_timeout", "watchdog", "stop_timeout", "restart"}


def node(name, worker, table="children", **keys):
    """A worker entry: node keys as keys, everything else as its `args`."""
    lines = [f"[[{table}]]", f'name = "{name}"', f'worker = "{worker}"']
    lines += [f"{key} = {toml_value(value)}" for key, value in keys.items() if key in NODE_KEYS]
    args = {key: value for key, value in keys.items() if key not in NODE_KEYS}
    if args:  # lists as JSON arrays (valid TOML for strings and numbers)
        lines.append("args = { " + ", ".join(
            f"{key} = {json.dumps(value) if isinstance(value, list) else toml_value(value)}"
            for key, value in args.items()) + " }")
    return "\n".join(lines) + "\n"


def row(tree, path):
    return next((n for n in tree.nodes() if n["path"] == path), None)


def ready_times(log: Path):
    return [float(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("ready ")] \
        if log.exists() else []


def test_never_ready_worker_is_aborted_and_restarted_as_a_failure(orch_tree):
    tree = orch_tree(HEAD + node("stuck", "n.never_ready", ready="notify", ready_timeout=2.0, stop_timeout=1.0)
                     + node("after", "n.late_ready", ready="notify", delay=0.0, log="/dev/null"), wait=False)
    first = tree.wait_for(lambda: (row(tree, "stuck") or {}).get("pid"), message="stuck started")
    first_created = psutil.Process(first).create_time()  # it lives >= 2 s, even on a loaded machine
    assert row(tree, "stuck")["state"] == "starting" and row(tree, "stuck")["ready"] is False
    again = tree.wait_for(lambda: (lambda r: r if r and r["pid"] and r["pid"] != first else None)(row(tree, "stuck")),
                          message="stuck restarted")
    assert again["failures"] >= 1 and again["restarts"] >= 1
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    out = tree.wait_for(lambda: (lambda o: o if "never_ready_stuck_here" in o else None)(tree.read_output()),
                        message="faulthandler stack in the output")
    assert "stuck: ready_timeout missed" in out
    assert "SIGABRT" in out
    # The sibling behind it did not start while it was starting (as behind a supervisor child,
    # the line moves on once it has exited trying).
    after = tree.wait_for(lambda: (row(tree, "after") or {}).get("pid"), message="after started")
    assert psutil.Process(after).create_time() >= first_created + 1.9


def test_late_ready_holds_back_its_next_sibling(orch_tree, tmp_path):
    log = tmp_path / "ready.log"
    tree = orch_tree(HEAD + node("slow", "n.late_ready", ready="notify", ready_timeout=8.0, delay=2.0,
                                 log=str(log))
                     + node("next", "n.late_ready", ready="notify", delay=0.0, log=str(tmp_path / "next.log")),
                     wait=False)
    slow = tree.wait_for(lambda: (row(tree, "slow") or {}).get("pid"), message="slow started")
    assert row(tree, "next")["pid"] is None and row(tree, "slow")["state"] == "starting"
    tree.wait_running()
    assert ready_times(log)
    # Both create times share the kernel's boot-time offset; slow slept 2 s before READY=1
    # (long enough that the look above happens before it, even on a loaded machine).
    following = psutil.Process(row(tree, "next")["pid"])
    assert following.create_time() >= psutil.Process(slow).create_time() + 1.9, \
        "next started before slow sent READY=1"
    assert row(tree, "slow")["pid"] == slow and row(tree, "slow")["ready"] is True
    assert row(tree, "")["ready"] is True


def test_worker_that_stops_heartbeating_is_aborted_and_restarted(orch_tree):
    tree = orch_tree(HEAD + node("beat", "n.heartbeats", ready="notify", watchdog=0.6, stop_timeout=1.0,
                                 beats=3, interval=0.2))
    first = row(tree, "beat")["pid"]
    again = tree.wait_for(lambda: (lambda r: r if r and r["pid"] not in (None, first) else None)(row(tree, "beat")),
                          message="beat restarted")
    assert again["failures"] >= 1
    out = tree.wait_for(lambda: (lambda o: o if "stops_heartbeating_here" in o else None)(tree.read_output()),
                        message="faulthandler stack in the output")
    assert "beat: watchdog missed" in out


def test_environment_is_systemds(orch_tree, tmp_path):
    log = tmp_path / "env.log"
    tree = orch_tree(HEAD + node("probe", "n.env_probe", ready="notify", watchdog=30.0, log=str(log)))
    env_line, pid_line = log.read_text().splitlines()[:2]
    assert "NOTIFY_SOCKET=" in env_line and "NOTIFY_SOCKET=None" not in env_line
    assert "WATCHDOG_USEC=30000000" in env_line
    assert f"WATCHDOG_PID={pid_line.split('=')[1]}" in env_line
    assert row(tree, "probe")["ready"] is True


@pytest.mark.parametrize("sender", ["python", "systemd-notify"])
def test_shell_worker_notifies_from_a_child_in_its_group(orch_tree, sender):
    if sender == "systemd-notify":
        if shutil.which("systemd-notify") is None:
            pytest.skip("no systemd-notify here")
        notify = "systemd-notify --ready"
    else:
        notify = f"{sys.executable} {PLUGINS / 'notify_send.py'} READY=1"
    script = f"sleep 0.3; {notify}; exec sleep 1000"
    tree = orch_tree(HEAD + node("sh", "orch.exec", ready="notify", ready_timeout=10.0, argv=["sh", "-c", script])
                     + node("after", "n.late_ready", ready="notify", delay=0.0, log="/dev/null"))
    assert row(tree, "sh")["ready"] is True and row(tree, "after")["pid"] is not None


def test_notify_from_an_unrelated_pid_is_ignored(orch_tree, tmp_path):
    tree = orch_tree(HEAD + node("stuck", "n.never_ready", ready="notify", ready_timeout=1.5, stop_timeout=1.0),
                     wait=False)
    first = tree.wait_for(lambda: (row(tree, "stuck") or {}).get("pid"), message="stuck started")
    sockets = [p for p in Path(tree.env["ORCH_RUN_DIR"], "ready").glob("notify-*.sock")]
    assert len(sockets) == 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1\nSTATUS=forged", str(sockets[0]))
    # The READY=1 from this (test) process changes nothing: the worker is aborted for its timeout.
    tree.wait_for(lambda: (lambda r: r if r and r["pid"] not in (None, first) else None)(row(tree, "stuck")),
                  message="stuck restarted")
    assert "stuck: ready_timeout missed" in tree.read_output()
    assert all(n["status"] != "forged" for n in tree.nodes())
    assert control_request(tree.env, tree.name, {"cmd": "ping"})["notify_ignored"] == 1



def test_status_is_shown_in_tree_json_and_text(orch_tree):
    tree = orch_tree(HEAD + node("st", "n.status", ready="notify", text="serving 3 clients"))
    tree.wait_for(lambda: row(tree, "st")["status"] == "serving 3 clients", message="status shown")
    nodes = tree.nodes()
    assert all("ready" in n and "status" in n for n in nodes)
    assert row(tree, "")["status"] is None
    text = tree.orch("tree", tree.name).stdout
    assert "(serving 3 clients)" in text


def test_extend_timeout_pushes_the_deadline_back(orch_tree, tmp_path):
    log = tmp_path / "ready.log"
    tree = orch_tree(HEAD + node("ext", "n.extended", ready="notify", ready_timeout=0.5, extend=3.0, delay=1.2,
                                 log=str(log)))
    r = row(tree, "ext")
    assert r["ready"] is True and r["restarts"] == 0 and r["failures"] == 0
    assert "ready_timeout missed" not in tree.read_output()
    assert wait_for(lambda: ready_times(log), message="ready sent")


def test_a_restart_round_waits_for_readiness_too(orch_tree, tmp_path):
    text = tree_text("ready", 'strategy = "one_for_all"\nstart_method = "spawn"\n', plugins=[NOTIFY])
    tree = orch_tree(text + node("slow", "n.late_ready", ready="notify", ready_timeout=5.0, delay=0.6,
                                 log=str(tmp_path / "slow.log"))
                     + node("fast", "n.late_ready", ready="notify", delay=0.0, log=str(tmp_path / "fast.log")))
    old = tree.pids()
    psutil.Process(old["fast"]).kill()
    again = tree.wait_for(lambda: (lambda p: p if p["slow"] != old["slow"] and p["fast"] not in (None, old["fast"])
                                   else None)(tree.pids()), message="both restarted")
    tree.wait_running()
    assert psutil.Process(again["fast"]).create_time() >= psutil.Process(again["slow"]).create_time() + 0.55


def test_up_detach_returns_once_notify_workers_are_ready(tmp_path, orch_env):
    file = tmp_path / "det.toml"
    file.write_text(tree_text("det", "", plugins=[NOTIFY])
                    + node("slow", "n.late_ready", ready="notify", delay=0.5, log=str(tmp_path / "r.log")))
    result = run_orch("up", str(file), "--detach", env=orch_env, timeout=30)
    assert result.returncode == 0, result.stderr
    root = psutil.Process(int(result.stdout.strip()))
    try:
        nodes = json_tree(orch_env, "det")  # at once: no waiting after `up --detach` returned
        slow = next(n for n in nodes if n["path"] == "slow")
        assert slow["ready"] is True and slow["state"] == "running"
        assert list(Path(orch_env["ORCH_RUN_DIR"], "det").glob("notify-*.sock"))
        assert run_orch("down", "det", env=orch_env).returncode == 0
        assert not list(Path(orch_env["ORCH_RUN_DIR"], "det").glob("notify-*.sock")), "socket left behind"
    finally:
        run_orch("down", "det", env=orch_env)
        kill_by_pid([root] if root.is_running() else [])
