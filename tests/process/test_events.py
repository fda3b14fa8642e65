"""Events (issue #10): every state change recorded in events.jsonl and handed to plugins'
`orch_event` hooks in a process of their own, which never slows supervision down."""
import os
import signal
import time

import psutil
import pytest

from orchestrator.testing import json_lines, wait_for
from tests.helpers import PLUGIN, PLUGINS, kill_by_pid, tree_text

HOOKS = PLUGINS / "eventhooks.py"
NOTIFY = PLUGINS / "notifyworkers.py"


events = json_lines  # what a running tree has written to events.jsonl, whole records only


def tree_with_hooks(name: str, body: str, plugins=(PLUGIN, HOOKS)) -> str:
    return tree_text(name, body, plugins=list(plugins))


SLEEPER = """
[[children]]
name = "a"
worker = "t.sleep"
stop_timeout = 2.0
"""


def pid_of(tree, path):
    return tree.node(path)["pid"]


def replaced(tree, path, old):
    pid = pid_of(tree, path)
    return pid if pid and pid != old else None


def test_a_crash_and_its_restart_are_events_in_the_file_and_at_the_hook(orch_tree, orch_env, tmp_path):
    seen = tmp_path / "hook.jsonl"
    orch_env["EVENT_HOOK_OUT"] = str(seen)
    tree = orch_tree(tree_with_hooks("ev1", SLEEPER))
    file = tree.log_dir / "events.jsonl"
    old = pid_of(tree, "a")
    os.kill(old, signal.SIGKILL)
    new = tree.wait_for(lambda: replaced(tree, "a", old), message="a replaced")
    tree.wait_for(lambda: any(e["event"] == "started" and e["pid"] == new for e in events(file)),
                  message="the replacement's started event")
    assert tree.stop() == 0
    written = events(file)
    kinds = [(e["path"], e["event"]) for e in written]
    assert kinds[:3] == [("", "started"), ("a", "started"), ("", "ready")]
    exited = next(e for e in written if e["event"] == "exited")
    assert exited["path"] == "a" and exited["pid"] == old and exited["signal"] == signal.SIGKILL
    assert exited["exit_code"] is None and exited["tree"] == "ev1"
    after = kinds[kinds.index(("a", "exited")):]
    assert after[:3] == [("a", "exited"), ("a", "restarting"), ("a", "started")]
    # The orderly stop: the worker is asked, it stops, then the root.
    assert kinds[-3:] == [("a", "stopping"), ("a", "stopped"), ("", "stopped")]
    stopped = written[-2]
    assert stopped["pid"] == new and stopped["signal"] == signal.SIGTERM
    # The plugin saw exactly what was written, in the same order.
    assert events(seen) == written


def test_an_event_says_why_orch_ended_a_process(orch_tree, orch_env, tmp_path):
    body = """
    [[children]]
    name = "stuck"
    worker = "n.never_ready"
    ready = "notify"
    ready_timeout = 1.0
    stop_timeout = 1.0
    """
    tree = orch_tree(tree_text("ev2", body, plugins=[NOTIFY]), wait=False)
    file = wait_for(lambda: (lambda d: d if d.exists() else None)(tree.log_dir / "events.jsonl"),
                    message="events file")
    exited = tree.wait_for(lambda: next((e for e in events(file) if e["event"] == "exited"), None),
                           message="the stuck worker's exit")
    assert exited["path"] == "stuck" and exited["signal"] == signal.SIGABRT
    assert exited["reason"].startswith("ready_timeout missed")
    stopping = next(e for e in events(file) if e["event"] == "stopping")
    assert stopping["reason"] == exited["reason"] and stopping["pid"] == exited["pid"]


def test_a_hook_that_raises_is_reported_and_the_tree_carries_on(orch_tree, orch_env):
    orch_env["EVENT_HOOK_MODE"] = "raise"
    tree = orch_tree(tree_with_hooks("ev3", SLEEPER))
    file = tree.log_dir / "events.jsonl"
    errors = tree.wait_for(lambda: [e for e in events(file) if e["event"] == "hook_error"] or None,
                           message="a hook_error event")
    assert "eventhooks.py" in errors[0]["reason"] and "hook refuses" in errors[0]["reason"]
    orch_log = (tree.log_dir / "orch.log").read_text()
    assert "orch_event raised on 'started'" in orch_log
    old = pid_of(tree, "a")
    os.kill(old, signal.SIGKILL)
    tree.wait_for(lambda: replaced(tree, "a", old), message="a replaced despite the failing hook")
    assert tree.stop() == 0


def test_a_blocked_hook_delays_no_restart_and_no_stop(orch_tree, orch_env, tmp_path):
    orch_env["EVENT_HOOK_OUT"] = str(tmp_path / "hook.jsonl")
    orch_env["EVENT_HOOK_MODE"] = "block"  # sleeps 60 s in the first `exited` event
    tree = orch_tree(tree_with_hooks("ev4", SLEEPER))
    hooks_pid = next(n["pid"] for n in tree.nodes() if n["kind"] == "helper")
    old = pid_of(tree, "a")
    os.kill(old, signal.SIGKILL)
    start = time.monotonic()
    new = tree.wait_for(lambda: replaced(tree, "a", old), message="a replaced while the hook sleeps")
    first = time.monotonic() - start
    # The hook is inside its sleep now: the events after the exit wait for it.
    wait_for(lambda: any(e["event"] == "exited" for e in events(tmp_path / "hook.jsonl")),
             message="the hook got the exit")
    os.kill(new, signal.SIGKILL)
    start = time.monotonic()
    tree.wait_for(lambda: replaced(tree, "a", new), message="a replaced again while the hook sleeps")
    second = time.monotonic() - start
    assert first < 2.0 and second < 2.0, (first, second)
    start = time.monotonic()
    assert tree.stop() == 0
    # The stop budget is the worker's 2 s; the sleeping hook gets 1 s more at most, and our
    # worker stops at once on SIGTERM: anything near 60 s means the hook held the stop.
    assert time.monotonic() - start < 10.0
    assert not psutil.pid_exists(hooks_pid) or psutil.Process(hooks_pid).status() == psutil.STATUS_ZOMBIE


def test_a_hook_that_cannot_keep_up_loses_events_past_the_queue_and_says_how_many(orch_tree, orch_env, tmp_path):
    orch_env["EVENT_HOOK_OUT"] = str(tmp_path / "hook.jsonl")
    orch_env["EVENT_HOOK_MODE"] = "block"
    orch_env["EVENT_HOOK_BLOCK_ON"] = "ready"  # the root's `ready`: at once, until released
    orch_env["EVENT_HOOK_RELEASE"] = str(tmp_path / "release")
    orch_env["ORCH_HOOK_QUEUE"] = "10"
    body = """
    max_restarts = 1000000
    within = 1.0

    [[children]]
    name = "crasher"
    worker = "ev.crash"
    restart = "always"
    backoff = 0
    """
    # A crash loop makes events far faster than the hook takes them while it sleeps.
    tree = orch_tree(tree_with_hooks("ev5", body, plugins=[HOOKS]), wait=False)
    file = wait_for(lambda: (lambda d: d if d.exists() else None)(tree.log_dir / "events.jsonl"),
                    message="events file")
    # Far more than the pipe (64 KiB: ~300 events) and the queue (10) hold.
    tree.wait_for(lambda: len(events(file)) > 1000, timeout=60, message="1000 events written")
    (tmp_path / "release").touch()
    lost = tree.wait_for(lambda: next((e for e in events(file) if e["event"] == "events_lost"), None),
                         timeout=30, message="an events_lost event")
    count = int(lost["reason"].split()[0])
    assert count > 0 and "did not keep up" in lost["reason"]
    # Once the hook caught up it got the report too, and what it missed is what was counted:
    # every event written until then, minus those it saw, is a lost one.
    seen = wait_for(lambda: (lambda s: s if any(e["event"] == "events_lost" for e in s) else None)(
        events(tmp_path / "hook.jsonl")), message="the hook got events_lost")
    written = events(file)
    upto = written.index(lost)
    delivered = [e for e in seen[:seen.index(lost)]]
    assert len(written[:upto]) - len(delivered) == count
    assert tree.stop() == 0


def test_a_dead_hook_process_is_started_again_and_later_events_reach_it(orch_tree, orch_env, tmp_path):
    seen = tmp_path / "hook.jsonl"
    orch_env["EVENT_HOOK_OUT"] = str(seen)
    tree = orch_tree(tree_with_hooks("ev6", SLEEPER))
    helper = next(n["pid"] for n in tree.nodes() if n["kind"] == "helper")
    os.kill(helper, signal.SIGKILL)
    again = tree.wait_for(lambda: next((n["pid"] for n in tree.nodes()
                                        if n["kind"] == "helper" and n["pid"] != helper), None),
                          message="a new hook process")
    assert psutil.Process(again).ppid() == tree.root_pid
    old = pid_of(tree, "a")
    os.kill(old, signal.SIGKILL)
    new = tree.wait_for(lambda: replaced(tree, "a", old), message="a replaced")
    wait_for(lambda: any(e["event"] == "started" and e["pid"] == new for e in events(seen)),
             message="the new hook process got the replacement's start")
    orch_log = (tree.log_dir / "orch.log").read_text()
    assert "orch_event hooks exited (killed by SIGKILL)" in orch_log
    assert tree.stop() == 0
