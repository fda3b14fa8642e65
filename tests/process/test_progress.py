"""orch on a terminal (a pseudo-terminal here): colored `orch tree`, progress lines while
`down`, `restart`, `reload` and `up --detach` wait; and nothing of either on a pipe."""
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from typing import Dict, List, Tuple

import psutil

from orchestrator.testing import run_orch
from tests.helpers import ORCH_ARGV, PLUGINS, kill_by_pid, ok, tree_text

CLEAR = "\r\x1b[K"
SGR = re.compile(r"\x1b\[[0-9;]*m")


def in_terminal(args: List[str], env: Dict[str, str], timeout: float = 30.0) -> Tuple[int, str]:
    """Run `orch ARGS` with stdin, stdout and stderr on a new pseudo-terminal, 200 columns
    wide; its exit code and all it wrote (the terminal turns each \\n into \\r\\n)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen([*ORCH_ARGV, *args], stdin=slave, stdout=slave, stderr=slave,
                            env=dict(env, TERM="xterm"))
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"orch {' '.join(args)} still writing after {timeout:g}s: {chunks}"
            if not select.select([master], [], [], remaining)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def slow_tree(name: str) -> str:
    """A worker and a supervisor of two, each worker ignoring SIGTERM: stopped by SIGKILL
    after its stop_timeout, one after the other, so a stop takes about 1.5 s."""
    return tree_text(name, '''
        [[children]]
        name = "a"
        worker = "t.ignore_term"
        stop_timeout = 0.5
        [[children]]
        name = "sup"
          [[children.children]]
          name = "b"
          worker = "t.ignore_term"
          stop_timeout = 0.5
          [[children.children]]
          name = "c"
          worker = "t.ignore_term"
          stop_timeout = 0.5
    ''')


def draws(output: str, pattern: str) -> List[Tuple[int, int]]:
    """The (done, total) of every progress line drawn that matches `pattern` (with two groups)."""
    return [(int(done), int(total)) for done, total in
            re.findall(re.escape(CLEAR) + pattern + r" \(\d+\.\ds\)", output)]


# ----- orch tree --------------------------------------------------------------------------


def test_tree_on_a_terminal_is_colored_and_plain_with_no_color(orch_tree, orch_env):
    tree = orch_tree(slow_tree("colors"))
    code, output = in_terminal(["tree", "colors"], orch_env)
    assert code == 0
    assert "\x1b[32mrunning\x1b[0m" in output and "\x1b[1mNODE" in output
    code, plain = in_terminal(["tree", "colors"], dict(orch_env, NO_COLOR="1"))
    assert code == 0 and "\x1b" not in plain
    assert "\x1b" not in in_terminal(["tree", "colors", "--no-color"], orch_env)[1]
    piped = tree.orch("tree", "colors")
    ok(piped)
    assert "\x1b" not in piped.stdout
    # The colors change nothing else: the same columns, the same text (pids may not move).
    assert SGR.sub("", output).splitlines()[1] == piped.stdout.splitlines()[1]


# ----- progress ------------------------------------------------------------------------------


def test_down_on_a_terminal_draws_an_updating_line_then_the_summary(orch_tree, orch_env):
    orch_tree(slow_tree("slowdown"))
    code, output = in_terminal(["down", "slowdown"], orch_env)
    assert code == 0, output
    counts = draws(output, r"orch: stopping tree 'slowdown': (\d+)/(\d+) processes gone")
    assert len(counts) >= 3, output
    # guardian, root, a, sup, b, c: gone one after the other, never fewer than before.
    assert {total for _, total in counts} == {6}
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert len({done for done, _ in counts}) >= 2, output
    # Erased before the summary, which is the same as ever.
    assert output.endswith(CLEAR + "orch: tree 'slowdown' stopped; 6 processes gone\n"), output


def test_down_on_a_pipe_prints_only_the_summary(orch_tree, orch_env):
    tree = orch_tree(slow_tree("pipedown"))
    result = tree.orch("down", "pipedown")
    assert result.returncode == 0
    assert result.stderr == "orch: tree 'pipedown' stopped; 6 processes gone\n"
    assert result.stdout == ""


def test_restart_of_a_supervisor_shows_its_nodes_coming_back(orch_tree, orch_env):
    tree = orch_tree(slow_tree("slowrestart"))
    code, output = in_terminal(["restart", "sup", "--tree", "slowrestart"], orch_env)
    assert code == 0, output
    counts = draws(output, r"orch: restarting slowrestart/sup: (\d+)/(\d+) nodes running")
    assert counts and {total for _, total in counts} == {3}, output
    assert counts[0][0] == 0, output  # the old processes do not count as restarted
    sup = tree.node("sup")
    assert output.endswith(f"{CLEAR}orch: slowrestart/sup: running (pid {sup['pid']})\n"), output


def test_reload_on_a_terminal_shows_progress_and_prints_the_plan(orch_tree, orch_env, tmp_path):
    tree = orch_tree(slow_tree("slowreload"))
    edited = tmp_path / "edited.toml"
    edited.write_text(slow_tree("slowreload").replace('name = "c"', 'name = "c2"'))
    code, output = in_terminal(["reload", str(edited)], orch_env)
    assert code == 0, output
    assert draws(output, r"orch: reloading tree 'slowreload': (\d+)/(\d+) nodes running"), output
    assert output.endswith(CLEAR + "- remove  sup/c\n+ add     sup/c2\n2 changes applied; 4 nodes unchanged\n"), output
    assert tree.node("sup/c2")["state"] == "running"


def test_json_reload_on_a_terminal_draws_nothing(orch_tree, orch_env, tmp_path):
    orch_tree(slow_tree("jsonreload"))
    edited = tmp_path / "edited.toml"
    edited.write_text(slow_tree("jsonreload").replace('name = "c"', 'name = "c2"'))
    code, output = in_terminal(["reload", str(edited), "--json"], orch_env)
    assert code == 0 and "\r" not in output and "\x1b" not in output, output


def test_detach_on_a_terminal_shows_nodes_starting(tmp_path, orch_env):
    file = tmp_path / "late.toml"
    file.write_text(tree_text("late", f'''
        [[children]]
        name = "first"
        worker = "t.sleep"
        [[children]]
        name = "late"
        worker = "n.late_ready"
        ready = "notify"
        args = {{ delay = 1.0, log = "{tmp_path / 'ready.log'}" }}
        [[children]]
        name = "last"
        worker = "t.sleep"
    ''', plugins=[PLUGINS / "testworkers.py", PLUGINS / "notifyworkers.py"]))
    root = None
    try:
        code, output = in_terminal(["up", str(file), "--detach"], orch_env)
        assert code == 0, output
        root = psutil.Process(int(re.search(r"root pid (\d+)", output).group(1)))
        counts = draws(output, r"orch: starting tree 'late': (\d+)/(\d+) nodes started")
        assert counts and {total for _, total in counts} == {4}, output
        assert max(done for done, _ in counts) >= 3, output  # root, first, late: last waits for late
        assert f"{CLEAR}{root.pid}\norch: tree 'late' is up (root pid {root.pid})" in output
        ok(run_orch("down", "late", env=orch_env))
    finally:
        if root is not None:
            assert kill_by_pid([root]) == []
