"""`orch logs` and `orch events` against a real tree: what its supervisors wrote to the log
directory, while it runs, across a restart, and after it stopped."""
import os
import select
import signal
import subprocess
import time

import pytest

from orchestrator.testing import run_orch, wait_for
from tests.helpers import ORCH_ARGV, ok, tree_text

# A worker that says who it is when it starts, then sleeps; the plugin file sits next to the tree file.
TALKER = '''
import os, signal, sys
from orchestrator import hookimpl

def talk(word):
    print(f"{word} from pid {os.getpid()}", flush=True)
    print(f"{word} on stderr", file=sys.stderr, flush=True)
    while True:
        signal.pause()

@hookimpl
def orch_workers():
    return {"log.talk": talk}
'''


def talking_tree(tmp_path, name: str) -> str:
    (tmp_path / "talker.py").write_text(TALKER)
    return tree_text(name, '''
        [[children]]
        name = "a"
        worker = "log.talk"
        args = { word = "hello" }
        [[children]]
        name = "sup"
          [[children.children]]
          name = "b"
          worker = "log.talk"
          args = { word = "howdy" }
    ''', plugins=["talker.py"])


def rows(stdout: str):
    """(path, line) of each `path | line` output line."""
    return [(left.strip(), right) for left, _, right in (row.partition(" | ") for row in stdout.splitlines())]


def logs_holding(env, *wanted, args=()):
    """A predicate: the (path, line) rows of `orch logs ARGS` once they hold every `wanted` one."""
    def holds():
        result = run_orch("logs", *args, env=env)
        ok(result)
        shown = rows(result.stdout)
        return shown if all(want in shown for want in wanted) else None
    return holds


def test_logs_shows_each_workers_lines_with_its_path(tmp_path, orch_tree, orch_env):
    tree = orch_tree(talking_tree(tmp_path, "lg"))
    pids = tree.pids()
    shown = wait_for(logs_holding(orch_env, ("a", f"hello from pid {pids['a']}"), ("a", "hello on stderr"),
                                  ("sup/b", f"howdy from pid {pids['sup/b']}")),
                     message="every worker's lines in `orch logs`")
    assert "orch" in {path for path, _ in shown}
    out = run_orch("logs", env=orch_env).stdout
    assert f"a     | hello from pid {pids['a']}" in out.splitlines()  # aligned on the longest path
    only = run_orch("logs", "sup", "--stream", "stdout", env=orch_env)
    ok(only)
    assert only.stdout.splitlines() == [f"sup/b | howdy from pid {pids['sup/b']}"]
    unknown = run_orch("logs", "nope", env=orch_env)
    assert unknown.returncode == 2 and "'nope'" in unknown.stderr and "sup/b" in unknown.stderr


def read_until(proc: subprocess.Popen, wanted: str, timeout: float = 15.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen.decode(errors="replace"):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {wanted!r}; the follower printed:\n{seen.decode()}"
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"the follower exited ({proc.wait()}); it printed:\n{seen.decode()}"
            seen += chunk
    return seen.decode()


@pytest.mark.timeout(60)
def test_logs_follow_shows_the_replacement_of_a_killed_worker(tmp_path, orch_tree, orch_env):
    tree = orch_tree(talking_tree(tmp_path, "fl"))
    first = tree.pids()["a"]
    wait_for(logs_holding(orch_env, ("a", f"hello from pid {first}")), message="the first worker's line")
    follower = subprocess.Popen([*ORCH_ARGV, "logs", "-f", "a"], env=orch_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(follower, f"a | hello from pid {first}\n")
        os.kill(first, signal.SIGKILL)
        second = tree.wait_for(lambda: tree.node("a")["state"] == "running" and tree.node("a")["pid"] != first
                               and tree.node("a")["pid"], message="a replacement for `a`")
        read_until(follower, f"a | hello from pid {second}\n")
        os.kill(follower.pid, signal.SIGINT)
        assert follower.wait(10) == 0
        assert follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            os.kill(follower.pid, signal.SIGKILL)
        follower.communicate()


def test_logs_and_events_of_a_stopped_tree_from_its_file(tmp_path, orch_tree, orch_env):
    tree = orch_tree(talking_tree(tmp_path, "st"))
    pids = tree.pids()
    wait_for(logs_holding(orch_env, ("a", f"hello from pid {pids['a']}"), ("sup/b", f"howdy from pid {pids['sup/b']}")),
             message="both workers' lines")
    ok(run_orch("down", "st", env=orch_env))
    tree.wait_exit()
    result = run_orch("logs", "--file", str(tree.file), "sup/b", "a", env=orch_env)
    ok(result)
    assert f"a     | hello from pid {pids['a']}" in result.stdout.splitlines()
    assert f"sup/b | howdy from pid {pids['sup/b']}" in result.stdout.splitlines()
    by_name = run_orch("logs", "--tree", "st", "-n", "1", "a", env=orch_env)
    ok(by_name)
    assert len(by_name.stdout.splitlines()) == 1 and by_name.stdout.startswith("a | hello ")
    nothing = run_orch("logs", env=orch_env)
    assert nothing.returncode == 2 and "--tree NAME or --file FILE" in nothing.stderr


def test_events_lists_started_and_exited(tmp_path, orch_tree, orch_env):
    tree = orch_tree(talking_tree(tmp_path, "ev"))
    first = tree.pids()["a"]
    os.kill(first, signal.SIGKILL)
    tree.wait_for(lambda: tree.node("a")["pid"] not in (None, first) and tree.node("a")["state"] == "running",
                  message="a replacement for `a`")

    def listed():
        result = run_orch("events", env=orch_env)
        ok(result)
        rows = [line.split() for line in result.stdout.splitlines()]
        return rows if any(row[1:3] == ["a", "exited"] for row in rows) else None
    rows = wait_for(listed, message="an `exited` event of `a` in `orch events`")
    assert ["a", "started", f"pid={first}"] == rows[[row[1:3] for row in rows].index(["a", "started"])][1:4]
    exited = next(row for row in rows if row[1:3] == ["a", "exited"])
    assert f"pid={first}" in exited and "signal=SIGKILL" in exited
    as_json = run_orch("events", "--json", "-n", "100", env=orch_env)
    ok(as_json)
    assert '"event": "started"' in as_json.stdout and '"event": "exited"' in as_json.stdout
