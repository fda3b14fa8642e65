"""`orch logs` / `orch events` on hand-written log directories: parsing, merging, tails,
rotated backups, filters, path selection, following across rotation, and the errors."""
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.cli import logread, logs
from orchestrator.cli.logread import LogFile, Watcher
from orchestrator.cli.main import main
from orchestrator.events import rfc3339
from orchestrator.root import control
from tests.helpers import ORCH_ARGV

T0 = 1_796_170_394.0  # 2026-12-02T00:13:14Z


def text(ts: float, line: str, stream: str = "stdout", pid: int = 100, mark: str = "|") -> str:
    return f"{rfc3339(ts)} {stream} {pid} {mark} {line}\n"


def jrec(ts: float, line: str, path: str, **extra) -> str:
    return json.dumps({"ts": rfc3339(ts), "tree": "t", "path": path, "pid": 7, "stream": "stdout",
                       "line": line, **extra}) + "\n"


@pytest.fixture
def logdir(tmp_path, monkeypatch):
    """The log directory of the stopped tree "t" (found by `--tree t` through $ORCH_LOG_DIR)."""
    monkeypatch.setenv(control.ENV_RUN_DIR, str(tmp_path / "run"))
    monkeypatch.setenv("ORCH_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    directory = tmp_path / "logs" / "t"
    directory.mkdir(parents=True)
    return directory


def write(directory: Path, name: str, *records: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write("".join(records))
    return path


def orch(capsys, *args: str):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def shown(out: str):
    """(label, line) of each `label | line` output line."""
    return [(left.strip(), right) for left, _, right in (row.partition(" | ") for row in out.splitlines())]


# ----- parsing ------------------------------------------------------------------------


def test_text_record_parses_into_its_fields():
    record = logread.parse_record(text(T0, "hello  world | x", stream="stderr", pid=42).rstrip("\n"), "web", "t")
    assert (record.stream, record.pid, record.line, record.continued) == ("stderr", 42, "hello  world | x", False)
    assert record.at == pytest.approx(T0) and record.ts == "2026-12-02T00:13:14.000000Z"
    assert (record.tree, record.path) == ("t", "web")


def test_text_continuation_and_empty_lines():
    assert logread.parse_record(text(T0, "rest", mark="+").rstrip("\n"), "w", "t").continued
    assert logread.parse_record(text(T0, "").rstrip("\n"), "w", "t").line == ""
    assert logread.parse_record(f"{rfc3339(T0)} stdout 1 |", "w", "t").line == ""


def test_json_record_parses_and_keeps_its_path():
    record = logread.parse_record(jrec(T0, "piece", "sup/w", continued=True).rstrip("\n"), "sup/w", "t")
    assert (record.line, record.pid, record.path, record.continued) == ("piece", 7, "sup/w", True)
    assert record.to_json() == {"ts": rfc3339(T0), "tree": "t", "path": "sup/w", "pid": 7, "stream": "stdout",
                                "line": "piece", "continued": True}


@pytest.mark.parametrize("line", ["just words", "", "{not json", '{"ts": 3}', "2026-13-99 stdout 1 | x",
                                  f"{rfc3339(T0)} stdout pid | x", f"{rfc3339(T0)} stdout 1 ! x"])
def test_a_line_that_does_not_parse_is_kept_as_is(line):
    record = logread.parse_record(line, "w", "t", fallback=5.0)
    assert (record.ts, record.line, record.at, record.stream) == (None, line, 5.0, None)


def test_orch_log_records_have_the_root_path():
    assert logread.parse_record(text(T0, "up", stream="orch").rstrip("\n"), "orch", "t").path == ""


# ----- tails and merging ---------------------------------------------------------------


def test_merge_orders_by_time_and_keeps_file_order_for_equal_times(logdir, capsys):
    write(logdir, "a.log", text(T0 + 1, "a1"), text(T0 + 3, "a3"), text(T0 + 3, "a3 again"))
    write(logdir, "b.log", text(T0 + 2, "b2"), text(T0 + 3, "b3"))
    code, out, _ = orch(capsys, "logs", "--tree", "t")
    assert code == 0
    assert shown(out) == [("a", "a1"), ("b", "b2"), ("a", "a3"), ("a", "a3 again"), ("b", "b3")]


def test_labels_are_aligned_and_orch_log_is_shown_as_orch(logdir, capsys):
    write(logdir, "orch.log", text(T0, "tree up", stream="orch"))
    write(logdir, "pipeline/reader.log", text(T0 + 1, "read"))
    _, out, _ = orch(capsys, "logs", "--tree", "t")
    assert out.splitlines() == ["orch            | tree up", "pipeline/reader | read"]


def test_n_counts_per_node(logdir, capsys):
    write(logdir, "a.log", *(text(T0 + i, f"a{i}") for i in range(5)))
    write(logdir, "b.log", *(text(T0 + i + 0.5, f"b{i}") for i in range(5)))
    _, out, _ = orch(capsys, "logs", "--tree", "t", "-n", "2")
    assert shown(out) == [("a", "a3"), ("b", "b3"), ("a", "a4"), ("b", "b4")]
    _, out, _ = orch(capsys, "logs", "--tree", "t", "b")
    assert len(out.splitlines()) == 5  # fewer than the default 10
    _, out, _ = orch(capsys, "logs", "--tree", "t", "-n", "0")
    assert out == ""


def test_rotated_backups_are_read_when_the_current_file_is_short(logdir, capsys):
    write(logdir, "w.log.2", text(T0 + 0, "oldest"), text(T0 + 1, "old"))
    write(logdir, "w.log.1", text(T0 + 2, "newer"))
    write(logdir, "w.log", text(T0 + 3, "now"))
    _, out, _ = orch(capsys, "logs", "--tree", "t", "-n", "3")
    assert [line for _, line in shown(out)] == ["old", "newer", "now"]
    _, out, _ = orch(capsys, "logs", "--tree", "t", "-n", "1")
    assert [line for _, line in shown(out)] == ["now"]


def test_a_line_longer_than_a_read_block_comes_back_whole(logdir, capsys):
    long = "x" * (3 * logread.BLOCK + 17)
    write(logdir, "w.log", text(T0, "before"), text(T0 + 1, long), text(T0 + 2, "after"))
    _, out, _ = orch(capsys, "logs", "--tree", "t")
    assert [line for _, line in shown(out)] == ["before", long, "after"]


def test_since_shows_only_newer_records_and_all_of_them(logdir, capsys):
    now = time.time()
    write(logdir, "w.log.1", text(now - 7200, "two hours ago"), text(now - 200, "backup, recent"))
    write(logdir, "w.log", *(text(now - 100 + i, f"recent {i}") for i in range(12)))
    _, out, _ = orch(capsys, "logs", "--tree", "t", "--since", "5m")
    assert [line for _, line in shown(out)] == ["backup, recent"] + [f"recent {i}" for i in range(12)]
    _, out, _ = orch(capsys, "logs", "--tree", "t", "--since", "150", "-n", "2")
    assert [line for _, line in shown(out)] == ["recent 10", "recent 11"]


@pytest.mark.parametrize("value, seconds", [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400),
                                            ("45", 45), ("1.5m", 90)])
def test_since_durations(value, seconds):
    assert logs.parse_since(value) == seconds


def test_stream_filter_applies_before_the_count(logdir, capsys):
    write(logdir, "w.log", text(T0, "err 1", stream="stderr"), text(T0 + 1, "out 1"),
          text(T0 + 2, "err 2", stream="stderr"), text(T0 + 3, "out 2"))
    write(logdir, "orch.log", text(T0, "said by orch", stream="orch"))
    _, out, _ = orch(capsys, "logs", "--tree", "t", "--stream", "stderr", "-n", "2")
    assert [line for _, line in shown(out)] == ["err 1", "err 2"]


def test_unparsed_lines_are_shown_as_is_in_their_place(logdir, capsys):
    write(logdir, "w.log", "edited by hand\n", text(T0 + 1, "one"), "between\n", text(T0 + 3, "three"))
    write(logdir, "v.log", text(T0 + 2, "two"))
    _, out, _ = orch(capsys, "logs", "--tree", "t")
    assert [line for _, line in shown(out)] == ["edited by hand", "one", "between", "two", "three"]


def test_json_output_converts_text_records(logdir, capsys):
    write(logdir, "sup/w.log", text(T0, "hi", pid=5), text(T0, "more", pid=5, mark="+"))
    write(logdir, "j.log", jrec(T0 + 1, "from json", "j"))
    _, out, _ = orch(capsys, "logs", "--tree", "t", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0] == {"ts": rfc3339(T0), "tree": "t", "path": "sup/w", "pid": 5, "stream": "stdout", "line": "hi"}
    assert rows[1]["continued"] is True and rows[2]["line"] == "from json" and rows[2]["path"] == "j"


# ----- selecting nodes --------------------------------------------------------------------


@pytest.fixture
def tree_files(logdir):
    for name in ("orch.log", "web#0.log", "web#1.log", "webby.log", "pipeline/reader.log",
                 "pipeline/writers/primary.log"):
        write(logdir, name, text(T0, name))
    return logdir


@pytest.mark.parametrize("paths, labels", [
    ([], {"orch", "web#0", "web#1", "webby", "pipeline/reader", "pipeline/writers/primary"}),
    (["web"], {"web#0", "web#1"}),
    (["web#1"], {"web#1"}),
    (["pipeline"], {"pipeline/reader", "pipeline/writers/primary"}),
    (["pipeline/writers/", "webby"], {"pipeline/writers/primary", "webby"}),
    (["orch"], {"orch"}),
])
def test_paths_select_nodes_supervisors_and_replicas(tree_files, capsys, paths, labels):
    code, out, _ = orch(capsys, "logs", "--tree", "t", *paths)
    assert code == 0
    assert {label for label, _ in shown(out)} == labels


def test_an_unknown_path_is_an_error_naming_the_known_ones(tree_files, capsys):
    code, out, err = orch(capsys, "logs", "--tree", "t", "web", "pipe")
    assert code == 2 and out == ""
    assert err.strip() == (f"orch: no node 'pipe' in the logs in {tree_files}; known: orch, pipeline/reader, "
                           "pipeline/writers/primary, web#0, web#1, webby")


def test_a_supervisor_directory_without_files_yet_is_no_error(tree_files, capsys):
    (tree_files / "quiet").mkdir()
    assert orch(capsys, "logs", "--tree", "t", "quiet") == (0, "", "")


# ----- bad input and missing logs -------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["-n", "-3"], "orch: -n takes a number"),
    (["-n", "x"], "orch: -n takes a number"),
    (["--since", "5x"], "orch: --since takes a duration"),
])
def test_bad_values_are_one_line_usage_errors(logdir, capsys, args, message):
    code, _, err = orch(capsys, "logs", "--tree", "t", *args)
    assert code == 2 and err.startswith(message) and len(err.splitlines()) == 1


def test_no_tree_named_and_none_running_is_a_usage_error(logdir, capsys):
    for command in ("logs", "events"):
        code, _, err = orch(capsys, command)
        assert code == 2 and "--tree NAME or --file FILE" in err and len(err.splitlines()) == 1


def test_a_tree_without_a_log_directory_fails(logdir, capsys):
    code, _, err = orch(capsys, "logs", "--tree", "never")
    assert code == 1 and err.strip().startswith("orch: tree 'never' has no logs:")


# ----- color ----------------------------------------------------------------------------


class Tty:
    def isatty(self):
        return True


def test_color_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert logs.use_color(False, Tty()) and not logs.use_color(True, Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not logs.use_color(False, Tty())
    monkeypatch.setenv("NO_COLOR", "")
    assert logs.use_color(False, Tty())


def test_each_path_has_a_stable_color():
    printer = logs.Printer(as_json=False, color=True, labels=["web", "db"])
    record = logread.parse_record(text(T0, "hi").rstrip("\n"), "web", "t")
    assert printer.format(record) == f"\x1b[{logs.color_of('web')}mweb\x1b[0m | hi"
    assert logs.color_of("web") == logs.color_of("web")


# ----- following ---------------------------------------------------------------------------


def watcher_of(directory: Path):
    files = {label: LogFile(path) for label, path in logread.node_files(directory).items()}
    return Watcher(lambda: logread.node_files(directory),
                   lambda label, line: (label, logread.parse_record(line, label, "t").line), files)


def test_follow_reads_the_old_file_to_its_end_then_the_new_one_after_a_rotation(logdir):
    path = write(logdir, "w.log", text(T0, "shown by the tail"))
    watcher = watcher_of(logdir)
    assert watcher.poll() == []
    write(logdir, "w.log", text(T0 + 1, "before"))
    assert watcher.poll() == [("w", "before")]
    write(logdir, "w.log", text(T0 + 2, "last of the old file"), "half a li")
    os.rename(path, f"{path}.1")  # the writer rotates...
    assert watcher.poll() == [("w", "last of the old file")]  # ... and has not made the new file yet
    write(logdir, "w.log", text(T0 + 3, "first of the new file"))
    assert watcher.poll() == [("w", "half a li"), ("w", "first of the new file")]
    write(logdir, "w.log", text(T0 + 4, "then"))
    assert watcher.poll() == [("w", "then")]
    watcher.close()


def test_follow_keeps_a_partial_line_until_it_is_complete_and_sees_new_files(logdir):
    path = write(logdir, "w.log", text(T0, "old"))
    watcher = watcher_of(logdir)
    with open(path, "a") as file:
        file.write(text(T0 + 1, "half")[:-4])  # up to the "h"
    assert watcher.poll() == []
    write(logdir, "w.log", "alf\n")
    assert watcher.poll() == [("w", "half")]
    write(logdir, "sup/new.log", text(T0 + 2, "a node added by a reload"), text(T0 + 3, "and more"))
    assert watcher.poll() == [("sup/new", "a node added by a reload"), ("sup/new", "and more")]
    path.write_text(text(T0 + 4, "truncated in place"))
    assert watcher.poll() == [("w", "truncated in place")]
    watcher.close()


def test_follow_stops_when_told(logdir):
    write(logdir, "w.log", text(T0, "old"))
    batches = []
    deadline = time.monotonic() + 0.3
    logread.follow(watcher_of(logdir), batches.append, interval=0.01, stop=lambda: time.monotonic() > deadline)
    assert batches == []


# ----- a follower process --------------------------------------------------------------------


def read_until(proc: subprocess.Popen, wanted, timeout: float = 10.0) -> str:
    """What `proc` printed, once `wanted(text)` holds (or fail after `timeout`)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not wanted(seen.decode()):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; the follower printed:\n{seen.decode()}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"the follower exited ({proc.wait()}); it printed:\n{seen.decode()}"
            seen += chunk
    return seen.decode()


@pytest.fixture
def follower(logdir):
    started = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([*ORCH_ARGV, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


@pytest.mark.timeout(30)
def test_follower_process_follows_a_rotation_and_a_new_node_and_ends_quietly_on_ctrl_c(logdir, follower):
    path = write(logdir, "w.log", text(T0, "old"))
    proc = follower("logs", "-f", "--tree", "t")
    read_until(proc, lambda out: "w | old\n" in out)
    write(logdir, "w.log", text(T0 + 1, "before rotation"))
    os.rename(path, f"{path}.1")
    write(logdir, "w.log", text(T0 + 2, "after rotation"))
    write(logdir, "sup/added.log", text(T0 + 3, "added"))
    out = read_until(proc, lambda out: "added\n" in out)
    assert shown(out) == [("w", "before rotation"), ("w", "after rotation"), ("sup/added", "added")]
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(10) == 0
    assert proc.stderr.read() == b""


@pytest.mark.timeout(30)
def test_follower_ends_quietly_when_its_reader_goes(logdir, follower):
    write(logdir, "w.log", text(T0, "old"))
    proc = follower("logs", "-f", "--tree", "t")
    read_until(proc, lambda out: "old" in out)
    proc.stdout.close()
    assert proc.wait(10) == 1
    assert proc.stderr.read() == b""


# ----- events ----------------------------------------------------------------------------------


def event(ts: float, path: str, kind: str, **fields) -> str:
    data = {"ts": rfc3339(ts), "tree": "t", "path": path, "event": kind, "pid": None, "exit_code": None,
            "signal": None, "restarts": None, "reason": None}
    return json.dumps(dict(data, **fields)) + "\n"


def test_events_text_skips_null_fields(logdir, capsys):
    write(logdir, "events.jsonl.1", event(T0, "web#0", "started", pid=123))
    write(logdir, "events.jsonl", event(T0 + 1.5, "web#0", "exited", pid=123, exit_code=1, restarts=2),
          event(T0 + 2, "web#0", "exited", pid=124, signal=9, reason="memory_limit: 300M > 200M"),
          "not an event\n", event(T0 + 3, "", "gave_up", reason="too many restarts"))
    code, out, _ = orch(capsys, "events", "--tree", "t")
    assert code == 0
    assert [" ".join(line.split()) for line in out.splitlines()] == [
        "2026-12-02T00:13:14.000Z web#0 started pid=123",
        "2026-12-02T00:13:15.500Z web#0 exited pid=123 exit_code=1 restarts=2",
        "2026-12-02T00:13:16.000Z web#0 exited pid=124 signal=SIGKILL memory_limit: 300M > 200M",
        "not an event",
        "2026-12-02T00:13:17.000Z (root) gave_up too many restarts",
    ]
    _, out, _ = orch(capsys, "events", "--tree", "t", "-n", "2", "--json")
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["gave_up"]  # the text line left out
