"""Worker output in the root's output, prefixed by node path; exit codes as the supervisor reports them."""
import os
import re
import signal
from pathlib import Path

import pytest

from tests.helpers import PLUGIN, PLUGINS

OUT = PLUGINS / "outworkers.py"


def tree_text(worker: str, args: str = "{}", start_method: str = "fork", plugin: Path = OUT) -> str:
    """root -> sup -> w, where w runs `worker` once (restart = "never")."""
    return f'''
        name = "out"
        start_method = "{start_method}"
        plugins = ["{plugin}"]
        [[children]]
        name = "sup"
          [[children.children]]
          name = "w"
          worker = "{worker}"
          args = {args}
          restart = "never"
    '''


def has_line(tree, line: str) -> bool:
    return re.search(rf"^{re.escape(line)}$", tree.read_output(), re.M) is not None


def wait_line(tree, line: str) -> None:
    tree.wait_for(lambda: has_line(tree, line), message=f"the line {line!r}")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_stdout_and_stderr_lines_are_prefixed_by_node_path(orch_tree, start_method):
    tree = orch_tree(tree_text("out.both", '{ out = "hello out", err = "hello err" }', start_method))
    wait_line(tree, "sup/w | hello out")
    wait_line(tree, "sup/w | hello err")


def test_final_line_without_newline_is_shown_when_the_worker_returns(orch_tree):
    tree = orch_tree(tree_text("out.partial", '{ text = "first\\nno newline at the end" }'), wait=False)
    tree.wait_for(lambda: tree.node("sup/w")["state"] == "stopped", message="w to return")
    wait_line(tree, "sup/w | first")
    wait_line(tree, "sup/w | no newline at the end")


def test_final_line_without_newline_is_shown_when_the_worker_is_killed(orch_tree):
    tree = orch_tree(tree_text("t.say", '{ text = "hello\\nworld" }', plugin=PLUGIN))
    wait_line(tree, "sup/w | hello")
    # One write of both lines: "world" was read with "hello" and is held back as a partial line.
    assert "world" not in tree.read_output()
    os.kill(tree.node("sup/w")["pid"], signal.SIGKILL)
    wait_line(tree, "sup/w | world")


def test_exception_traceback_is_prefixed_and_exits_1(orch_tree):
    tree = orch_tree(tree_text("out.fail", '{ message = "kaboom" }'), wait=False)
    wait_line(tree, "orch: sup/w exited with code 1")
    wait_line(tree, "sup/w | Traceback (most recent call last):")
    wait_line(tree, "sup/w | ValueError: kaboom")
    output = tree.read_output()
    start_at = output.index("sup/w | Traceback")
    end_at = output.index("sup/w | ValueError: kaboom")
    # The supervisor's own log lines may land between two reads of the worker's pipe.
    traceback = [line for line in output[start_at:end_at].splitlines() if not line.startswith("orch: ")]
    assert any('File "' in line for line in traceback), output
    unprefixed = [line for line in traceback if not line.startswith("sup/w | ")]
    assert unprefixed == [], output
    assert tree.node("sup/w")["state"] == "failed"


def test_long_line_is_shown_in_prefixed_pieces(orch_tree):
    size, prefix = 200_000, "sup/w | "
    tree = orch_tree(tree_text("out.partial", f'{{ text = "{"x" * size}\\n" }}'), wait=False)

    def pieces():
        return [line[len(prefix):] for line in tree.read_output().splitlines() if line.startswith(prefix)]

    # The exit may be noticed before the pipe is drained: wait for the output itself.
    tree.wait_for(lambda: sum(map(len, pieces())) >= size, message="the whole line")
    assert len(pieces()) > 1
    assert all(set(piece) == {"x"} for piece in pieces())
    assert sum(map(len, pieces())) == size


@pytest.mark.parametrize("worker, args, code, state, start_method", [
    ("out.ret", "{}", 0, "stopped", "fork"),
    ("out.exit", "{ code = 0 }", 0, "stopped", "fork"),
    ("out.fail", '{ message = "x" }', 1, "failed", "fork"),
    ("out.exit", "{ code = 7 }", 7, "failed", "fork"),
    ("out.fail", '{ message = "x" }', 1, "failed", "spawn"),
    ("out.exit", "{ code = 7 }", 7, "failed", "spawn"),
], ids=["return", "exit-0", "raise", "exit-7", "raise-spawn", "exit-7-spawn"])
def test_exit_code_of_a_worker_callable(orch_tree, worker, args, code, state, start_method):
    tree = orch_tree(tree_text(worker, args, start_method), wait=False)
    wait_line(tree, f"orch: sup/w exited with code {code}")
    tree.wait_for(lambda: tree.node("sup/w")["state"] == state, message=f"w to be {state}")
    node = tree.node("sup/w")
    assert node["pid"] is None and node["restarts"] == 0
    assert tree.node("sup")["state"] == "running"
    assert tree.process.poll() is None
