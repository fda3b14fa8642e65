"""Worker output in per-node log files: every line once and in order, rotated, stamped, recreated, and a
log that cannot be written never stops the tree.

Each tree sets its log directory with a `[log]` table. The workers live in a plugin
file the test writes next to the tree file.
"""
import os
import re
import signal
import textwrap
from pathlib import Path
from typing import List, Optional

import pytest

from orchestrator.testing import json_lines
from tests.helpers import running_again, toml_value

PLUGIN_SOURCE = '''
"""Workers of the log tests."""
import os
import signal
import sys
import time

from orchestrator import hookimpl


def flood(count, pad=0):
    """Write `count` numbered lines as fast as possible (big writes), then return."""
    batch = []
    for n in range(count):
        batch.append(f"line {n:07d}{'x' * pad}\\n")
        if len(batch) == 1000:
            sys.stdout.write("".join(batch))
            batch = []
    sys.stdout.write("".join(batch))
    sys.stdout.flush()


def raw(hex, then_sleep=True):
    """Write the bytes `hex` to fd 1 at once, then sleep (or return)."""
    os.write(1, bytes.fromhex(hex))
    while then_sleep:
        signal.pause()


def streams():
    """One line on stdout and one on stderr (print, no flush), then sleep."""
    print("to stdout")
    print("to stderr", file=sys.stderr)
    while True:
        signal.pause()


def ticker(interval=0.05, stream="stdout"):
    """A numbered line every `interval` seconds, printed without flush."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    n = 0
    while True:
        print(f"tick {n}", file=out)
        n += 1
        time.sleep(interval)


def close_stdout(interval=0.05):
    """Close stdout, then tick on stderr."""
    print("last on stdout", flush=True)
    sys.stdout.close()
    os.close(1)
    n = 0
    while True:
        print(f"still here {n}", file=sys.stderr)
        n += 1
        time.sleep(interval)


def hello_then_sleep():
    """One print, never flushed: line buffering must bring it out."""
    print("hello from a print")
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {"l.flood": flood, "l.raw": raw, "l.streams": streams, "l.ticker": ticker,
            "l.close_stdout": close_stdout, "l.hello": hello_then_sleep}
'''

RECORD = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (stdout|stderr) (\d+) ([|+]) (.*)$")


def tree(tmp_path: Path, worker: str, args: Optional[dict] = None, log: Optional[dict] = None,
         start_method: str = "fork", extra: str = "", **keys) -> str:
    """root -> sup -> w running `worker`; `log` are the [log] keys (dir "logs" unless given)."""
    plugin = tmp_path / "logworkers.py"
    plugin.write_text(PLUGIN_SOURCE)
    log = {"dir": "logs", **(log or {})}
    node = "\n".join(f"  {key} = {toml_value(value)}" for key, value in keys.items())
    return textwrap.dedent(f'''
        name = "logs"
        start_method = "{start_method}"
        plugins = [{toml_value(plugin)}]
    ''') + "[log]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in log.items()) + f'''
[[children]]
name = "sup"
  [[children.children]]
  name = "w"
  worker = "{worker}"
  args = {toml_value(args or {})}
{node}
{extra}'''


def log_files(tmp_path: Path, node: str = "sup/w") -> List[Path]:
    """The node's log files, oldest first: the rotated ones (highest number first), then the file."""
    path = tmp_path / "logs" / f"{node}.log"
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return rotated + ([path] if path.exists() else [])


def text_records(tmp_path: Path, node: str = "sup/w") -> List[re.Match]:
    records = []
    for file in log_files(tmp_path, node):
        for line in file.read_bytes().decode().split("\n")[:-1]:  # not read_text: it eats b"\r"
            match = RECORD.match(line)
            assert match, f"{file}: not a record: {line[:200]!r}"
            records.append(match)
    return records


def lines_of(tmp_path: Path, stream: Optional[str] = None) -> List[str]:
    return [m.group(5) for m in text_records(tmp_path) if stream is None or m.group(2) == stream]


def wait_lines(tree_, tmp_path: Path, wanted: List[str], stream: Optional[str] = None, timeout: float = 10) -> None:
    """Wait until every line of `wanted` is in the node's log."""
    tree_.wait_for(lambda: set(wanted) <= set(lines_of(tmp_path, stream)), timeout=timeout,
                   message=f"{wanted[:3]}... in the log of sup/w")


# ----- every line, once, in order ------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_flood_is_logged_once_in_order_across_rotated_files(orch_tree, tmp_path, start_method):
    count = 100_000
    tree_ = orch_tree(tree(tmp_path, "l.flood", {"count": count}, {"max_bytes": "16KB", "backups": 1000},
                           start_method, restart="never"), wait=False)
    last = f"line {count - 1:07d}"
    tree_.wait_for(lambda: log_files(tmp_path) and last in log_files(tmp_path)[-1].read_text(), timeout=30,
                   message="the last line in the log")
    records = text_records(tmp_path)
    assert [m.group(5) for m in records] == [f"line {n:07d}" for n in range(count)]
    assert {m.group(2) for m in records} == {"stdout"} and {m.group(4) for m in records} == {"|"}
    assert len({m.group(3) for m in records}) == 1  # one pid
    files = log_files(tmp_path)
    assert len(files) > 200 and all(file.stat().st_size <= 16 * 1024 for file in files)
    # The foreground view (a regular file here, never slow) shows every line too, none dropped.
    tree_.wait_for(lambda: f"sup/w | {last}" in tree_.read_output(), message="the last line echoed")
    echoed = [line for line in tree_.read_output().splitlines() if line.startswith("sup/w | ")]
    assert echoed == [f"sup/w | line {n:07d}" for n in range(count)]


def test_no_backups_keeps_only_the_current_file(orch_tree, tmp_path):
    count = 5000
    tree_ = orch_tree(tree(tmp_path, "l.flood", {"count": count}, {"max_bytes": "1KB", "backups": 0},
                           restart="never"), wait=False)
    path = tmp_path / "logs" / "sup" / "w.log"
    last = f"line {count - 1:07d}"
    tree_.wait_for(lambda: path.exists() and last in path.read_text(), timeout=30, message="the last line")
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.log"]
    lines = lines_of(tmp_path)
    assert 0 < len(lines) < 30 and lines == [f"line {n:07d}" for n in range(count - len(lines), count)]
    assert path.stat().st_size <= 1024


# ----- what a record holds -------------------------------------------------------------


@pytest.mark.parametrize("format", ["text", "json"])
def test_a_line_longer_than_64k_becomes_continued_records(orch_tree, tmp_path, format):
    size = 200_000
    data = b"before\n" + b"y" * size + b"\nafter\n"
    tree_ = orch_tree(tree(tmp_path, "l.raw", {"hex": data.hex()}, {"format": format}))
    path = tmp_path / "logs" / "sup" / "w.log"
    tree_.wait_for(lambda: path.exists() and b"after" in path.read_bytes(), message="the line after")
    if format == "json":
        tree_.wait_for(lambda: any(record["line"] == "after" for record in json_lines(path)),
                       message="the record of the line after, whole")
        records = json_lines(path)
        pieces = [(record["line"], record.get("continued", False)) for record in records]
        assert {record["tree"] for record in records} == {"logs"} and {record["path"] for record in records} == {"sup/w"}
        assert {record["stream"] for record in records} == {"stdout"}
        assert "continued" not in records[0] and "continued" not in records[1]
    else:
        pieces = [(m.group(5), m.group(4) == "+") for m in text_records(tmp_path)]
    assert pieces[0] == ("before", False) and pieces[-1] == ("after", False)
    long_pieces = pieces[1:-1]
    assert len(long_pieces) == 4  # 200,000 bytes in pieces of at most 64 KiB
    assert "".join(text for text, _ in long_pieces) == "y" * size
    assert [continued for _, continued in long_pieces] == [False, True, True, True]


def test_invalid_utf8_is_replaced_and_a_last_line_without_newline_kept(orch_tree, tmp_path):
    data = "café ok\n".encode() + b"bad \xff\xfe bytes\r\n" + b"no newline at the end"
    tree_ = orch_tree(tree(tmp_path, "l.raw", {"hex": data.hex(), "then_sleep": False}, restart="never"), wait=False)
    tree_.wait_for(lambda: tree_.node("sup/w")["state"] == "stopped", message="w to return")
    expected = ["café ok", "bad \ufffd\ufffd bytes\r", "no newline at the end"]
    tree_.wait_for(lambda: lines_of(tmp_path) == expected, message="the three lines")


def test_stdout_and_stderr_are_told_apart(orch_tree, tmp_path):
    tree_ = orch_tree(tree(tmp_path, "l.streams"))
    wait_lines(tree_, tmp_path, ["to stdout", "to stderr"])
    records = {m.group(5): m for m in text_records(tmp_path)}
    pid = str(tree_.node("sup/w")["pid"])
    assert records["to stdout"].group(2, 3) == ("stdout", pid)
    assert records["to stderr"].group(2, 3) == ("stderr", pid)
    # The foreground view shows both, prefixed by the node path, as before.
    tree_.wait_for(lambda: "sup/w | to stderr" in tree_.read_output(), message="the echo")
    assert "sup/w | to stdout" in tree_.read_output()


# ----- the file and the process live their own lives ----------------------------------


def test_a_log_file_deleted_from_outside_is_recreated_on_the_next_line(orch_tree, tmp_path):
    tree_ = orch_tree(tree(tmp_path, "l.ticker"))
    path = tmp_path / "logs" / "sup" / "w.log"
    tree_.wait_for(path.exists, message="the log file")
    path.unlink()
    tree_.wait_for(lambda: path.exists() and len(lines_of(tmp_path)) >= 2, message="the log file made again")
    first = lines_of(tmp_path)[0]
    assert first.startswith("tick ") and int(first.split()[1]) > 0  # it goes on where it was


def test_a_worker_closing_stdout_keeps_running_and_logging_stderr(orch_tree, tmp_path):
    tree_ = orch_tree(tree(tmp_path, "l.close_stdout"))
    pid = tree_.node("sup/w")["pid"]
    wait_lines(tree_, tmp_path, ["last on stdout", "still here 5"])
    wait_lines(tree_, tmp_path, ["still here 20"], stream="stderr")
    node = tree_.node("sup/w")
    assert node["pid"] == pid and node["state"] == "running" and node["restarts"] == 0


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_print_is_line_buffered_under_fork_and_spawn(orch_tree, orch_env, tmp_path, start_method):
    orch_env.pop("PYTHONUNBUFFERED", None)  # the fixture sets it; a user's shell does not
    tree_ = orch_tree(tree(tmp_path, "l.hello", start_method=start_method))
    wait_lines(tree_, tmp_path, ["hello from a print"])
    assert tree_.node("sup/w")["state"] == "running"  # seen while it runs, not flushed at exit


def test_orch_exec_children_get_pythonunbuffered(orch_tree, orch_env, tmp_path):
    orch_env.pop("PYTHONUNBUFFERED", None)
    script = "echo unbuffered=$PYTHONUNBUFFERED; exec sleep 1000"
    extra = textwrap.dedent(f'''
        [[children.children]]
        name = "own"
        worker = "orch.exec"
        args = {{ argv = ["sh", "-c", {toml_value(script)}] }}
        env = {{ PYTHONUNBUFFERED = "" }}
    ''')
    tree_ = orch_tree(tree(tmp_path, "orch.exec", {"argv": ["sh", "-c", script]}, extra=extra))
    wait_lines(tree_, tmp_path, ["unbuffered=1"])
    tree_.wait_for(lambda: [m.group(5) for m in text_records(tmp_path, "sup/own")] == ["unbuffered="],
                   message="the node's own setting kept")


# ----- a log that cannot be written -------------------------------------------------------


def test_an_unwritable_log_is_reported_once_and_the_tree_keeps_supervising(orch_tree, tmp_path):
    # A regular file where the node's log directory should be: ENOTDIR, even for root.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sup").write_text("not a directory\n")
    tree_ = orch_tree(tree(tmp_path, "l.ticker", {"interval": 0.01}))
    message = "cannot write"
    tree_.wait_for(lambda: message in tree_.read_output(), message="the report of the log error")
    pid = tree_.node("sup/w")["pid"]
    tree_.wait_for(lambda: "sup/w | tick 30" in tree_.read_output(), message="more lines, echoed")
    os.kill(pid, signal.SIGKILL)
    tree_.wait_for(lambda: running_again(tree_.node("sup/w"), pid), message="w restarted")
    tree_.wait_for(lambda: tree_.read_output().count("sup/w | tick 10\n") >= 2,
                   message="the new process's lines, echoed")
    reports = [line for line in tree_.read_output().splitlines() if message in line]
    assert len(reports) == 1, reports
    assert "sup/w" in reports[0] and str(tmp_path / "logs" / "sup" / "w.log") in reports[0]
    assert "Not a directory" in reports[0]
