"""logfile.py and relay.py in this process: record formats, rotation, recreation, errors, line framing.

Real files in tmp_path and real pipes; no supervisor, no loop (the relay is fed by hand).
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import random
import re
import select
import stat
from pathlib import Path
from typing import List, Optional

import pytest

from orchestrator.engine import logfile as logfile_module
from orchestrator.engine.logfile import LogFile, RecordFormat, Stamps
from orchestrator.engine.relay import MAX_LINE, NodeLog, NodeLogs, StreamRelay, log_path
from orchestrator.events import rfc3339
from orchestrator.spec.model import LogFormat, LogSpec

STAMP = "2026-12-02T00:13:14.123456Z"
TEXT_RECORD = re.compile(r"^(\S+) (stdout|stderr) (\d+) ([|+]) (.*)$", re.S)


class Errors:
    """An on_error that remembers its messages."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)


def read_lines(path: Path) -> List[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def all_files(path: Path, backups: int) -> List[Path]:
    """The rotated files, oldest first, then the file itself (those that exist)."""
    files = [Path(f"{path}.{n}") for n in range(backups, 0, -1)] + [path]
    return [file for file in files if file.exists()]


# ----- timestamps and record formats ------------------------------------------------


@pytest.mark.parametrize("micros", [0, 999_999, 1_000_000, 1_796_170_394_123_456, 1_796_170_394_999_999,
                                    1_796_170_395_000_000, 253_402_300_799_000_001])
def test_stamps_are_rfc3339_utc_with_microseconds(micros):
    expected = (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
                + datetime.timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    stamps = Stamps()
    assert stamps.of_micros(micros) == expected
    assert stamps.of_micros(micros) == expected  # the cached seconds part


def test_stamps_have_the_form_of_events_rfc3339():
    form = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert form.match(Stamps().now()) and form.match(rfc3339(0.5))


def test_text_records_of_a_block():
    records = RecordFormat(LogFormat.TEXT, "t", "a/b").block(STAMP, "stdout", 42, b"one\n\ntwo\r\n")
    assert records == (f"{STAMP} stdout 42 | one\n{STAMP} stdout 42 | \n{STAMP} stdout 42 | two\r\n").encode()


def test_text_records_replace_invalid_utf8_and_keep_valid():
    records = RecordFormat(LogFormat.TEXT, "t", "w").block(STAMP, "stderr", 7, b"caf\xc3\xa9 \xff\xfe end\n\xe2\x82\n")
    assert records.decode() == f"{STAMP} stderr 7 | café \ufffd\ufffd end\n{STAMP} stderr 7 | \ufffd\n"


@pytest.mark.parametrize("head, data", [
    (b"", b"a\nb\n"), (b"par", b"tial\nnext\nrest"), (b"", b"x\n"), (b"h\xc3", b"\xa9\n\xff\nz"), (b"", b"\n\n"),
])
@pytest.mark.parametrize("format", list(LogFormat))
def test_records_in_parts_are_the_block_of_the_whole_lines(format, head, data):
    records = RecordFormat(format, "t", "w")
    end = data.rfind(b"\n") + 1
    parts = records.records(STAMP, "stdout", 3, head, data, end)
    assert b"".join(bytes(part) for part in parts) == records.block(STAMP, "stdout", 3, head + data[:end])


LINES = ['plain', '', 'quote " and backslash \\ and tab \t', 'cr \r', 'ünïcödé ✓ 𝄞', 'ctl \x00\x1b\x7f',
         '\u2028 line separator', 'ends with backslash \\']


@pytest.mark.parametrize("continued", [False, True])
def test_json_records_are_json_dumps_byte_for_byte(continued):
    records = RecordFormat(LogFormat.JSON, 'tr"ee', "sup/w#0")
    block = "".join(line + "\n" for line in LINES).encode()
    if continued:
        made = records.pieces(STAMP, "stderr", 99, [(line.encode(), True) for line in LINES])
    else:
        made = records.block(STAMP, "stderr", 99, block)
    expected = []
    for line in LINES:
        record = {"ts": STAMP, "tree": 'tr"ee', "path": "sup/w#0", "pid": 99, "stream": "stderr", "line": line}
        if continued:
            record["continued"] = True
        expected.append(json.dumps(record, ensure_ascii=False) + "\n")
    assert made.decode() == "".join(expected)


def test_json_records_replace_invalid_utf8():
    made = RecordFormat(LogFormat.JSON, "t", "w").block(STAMP, "stdout", 1, b"a\xffb\n")
    assert json.loads(made)["line"] == "a\ufffdb"


def test_pieces_mark_continuations_in_text():
    made = RecordFormat(LogFormat.TEXT, "t", "w").pieces(STAMP, "stdout", 5, [(b"ab", False), (b"cd", True)])
    assert made == f"{STAMP} stdout 5 | ab\n{STAMP} stdout 5 + cd\n".encode()


# ----- LogFile: opening, rotation -------------------------------------------------


def test_opened_lazily_with_parent_directories(tmp_path):
    path = tmp_path / "deep" / "er" / "w.log"
    log = LogFile(str(path), 0, 0, Errors())
    assert not (tmp_path / "deep").exists()
    log.write(b"one\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~umask
    assert stat.S_IMODE((tmp_path / "deep" / "er").stat().st_mode) == 0o750 & ~umask
    log.write(b"two\n")
    log.close()
    assert path.read_bytes() == b"one\ntwo\n"


def test_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "w.log"
    path.write_bytes(b"old\n")
    log = LogFile(str(path), 0, 0, Errors())
    log.write(b"new\n")
    assert path.read_bytes() == b"old\nnew\n"


def records_of(count: int, size: int = 30) -> List[bytes]:
    return [f"record {n:06d} ".encode().ljust(size - 1, b"x") + b"\n" for n in range(count)]


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_rotation_keeps_records_whole_in_order_within_max_bytes(tmp_path, chunk):
    path, max_bytes, backups = tmp_path / "w.log", 1024, 50
    log = LogFile(str(path), max_bytes, backups, Errors())
    records = records_of(1000)
    for start in range(0, len(records), chunk):
        log.write(b"".join(records[start:start + chunk]))
    files = all_files(path, backups)
    assert len(files) > 20
    assert all(file.stat().st_size <= max_bytes for file in files)
    assert [line for file in files for line in read_lines(file)] == records
    # Rotation at the last record boundary that fits: every full file is nearly full.
    assert all(file.stat().st_size > max_bytes - 30 for file in files[:-1])


def test_rotation_keeps_only_backups_files(tmp_path):
    path = tmp_path / "w.log"
    log = LogFile(str(path), 1024, 3, Errors())
    records = records_of(1000)
    for record in records:
        log.write(record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log", "w.log.1", "w.log.2", "w.log.3"]
    kept = [line for file in all_files(path, 3) for line in read_lines(file)]
    assert kept == records[-len(kept):]


def test_no_backups_removes_the_full_file(tmp_path):
    path = tmp_path / "w.log"
    log = LogFile(str(path), 1024, 0, Errors())
    records = records_of(200)
    log.write(b"".join(records))
    assert [p.name for p in tmp_path.iterdir()] == ["w.log"]
    kept = read_lines(path)
    assert 0 < len(kept) <= 1024 // 30 and kept == records[-len(kept):]


def test_zero_max_bytes_never_rotates(tmp_path):
    path = tmp_path / "w.log"
    log = LogFile(str(path), 0, 5, Errors())
    for record in records_of(1000):
        log.write(record)
    assert [p.name for p in tmp_path.iterdir()] == ["w.log"] and len(read_lines(path)) == 1000


def test_a_record_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path):
    path = tmp_path / "w.log"
    log = LogFile(str(path), 1024, 10, Errors())
    small, big = b"small\n", b"b" * 3000 + b"\n"
    log.write(small)
    log.write(big + small)
    log.write(small)
    assert [f.read_bytes() for f in all_files(path, 10)] == [small, big, small + small]


def test_write_parts_is_write_of_the_joined_parts(tmp_path):
    records = records_of(100)
    joined = b"".join(records)
    for max_bytes in (0, 1024):
        path = tmp_path / f"w{max_bytes}.log"
        log = LogFile(str(path), max_bytes, 100, Errors())
        view = memoryview(joined)
        log.write_parts([records[0], view[30:1500], view[1500:]])
        assert [line for file in all_files(path, 100) for line in read_lines(file)] == records


# ----- LogFile: the file changed from outside, errors ------------------------------


def test_a_deleted_file_is_recreated_on_the_next_write(tmp_path):
    path = tmp_path / "w.log"
    log = LogFile(str(path), 0, 0, Errors())
    log.write(b"one\n")
    path.unlink()
    log.write(b"two\n")
    assert path.read_bytes() == b"two\n"


def test_a_file_moved_away_is_left_alone_and_a_new_one_made(tmp_path):
    path, moved = tmp_path / "w.log", tmp_path / "moved.log"
    log = LogFile(str(path), 0, 0, Errors())
    log.write(b"one\n")
    path.rename(moved)
    log.write(b"two\n")
    assert moved.read_bytes() == b"one\n" and path.read_bytes() == b"two\n"


def test_a_deleted_directory_is_recreated(tmp_path):
    path = tmp_path / "logs" / "w.log"
    log = LogFile(str(path), 0, 0, Errors())
    log.write(b"one\n")
    path.unlink()
    path.parent.rmdir()
    log.write(b"two\n")
    assert path.read_bytes() == b"two\n"


def test_write_errors_are_reported_once_and_the_loss_counted_when_it_works_again(tmp_path):
    blocker = tmp_path / "logs"
    blocker.write_bytes(b"a file where the directory should be")
    path = blocker / "w.log"
    errors = Errors()
    log = LogFile(str(path), 0, 0, errors)
    log.write(b"one\ntwo\n")  # ENOTDIR: never raises
    log.write(b"three\n")
    log.write_parts([b"four\n", memoryview(b"five\n")])
    assert errors.messages == [f"cannot write {path}: Not a directory; dropping its lines until it works again"]
    blocker.unlink()
    log.write(b"six\n")
    assert errors.messages[1:] == [f"lost 5 lines of {path}: Not a directory"]
    log.write(b"seven\n")
    assert len(errors.messages) == 2 and path.read_bytes() == b"six\nseven\n"


def test_a_failed_write_drops_its_lines_and_a_torn_record_is_ended(tmp_path, monkeypatch):
    path = tmp_path / "w.log"
    errors = Errors()
    log = LogFile(str(path), 0, 0, errors)
    log.write(b"one\n")
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data) -> int:
        calls.append(bytes(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:3])  # part of "two\n"
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logfile_module.os, "write", short_then_full)
    log.write(b"two\nthree\n")
    monkeypatch.setattr(logfile_module.os, "write", real_write)
    log.write(b"four\n")
    assert path.read_bytes() == b"one\ntwo\nfour\n"  # "two" was torn; its record is ended
    assert errors.messages == [
        f"cannot write {path}: No space left on device; dropping its lines until it works again",
        f"lost 2 lines of {path}: No space left on device",
    ]


def test_a_fifo_at_the_path_never_blocks(tmp_path):
    path = tmp_path / "w.log"
    os.mkfifo(path)
    errors = Errors()
    LogFile(str(path), 0, 0, errors).write(b"one\n")  # no reader: ENXIO at once, not a blocked open
    assert len(errors.messages) == 1 and str(path) in errors.messages[0]



@pytest.mark.parametrize("target", ["file", "missing", "directory"])
def test_a_symlink_planted_at_the_path_is_refused_not_followed(tmp_path, target):
    victim = tmp_path / "victim"
    if target == "file":
        victim.write_text("keep me\n")
    elif target == "directory":
        victim.mkdir()
    path = tmp_path / "w.log"
    path.symlink_to(victim)
    errors = Errors()
    log = LogFile(str(path), 0, 0, errors)
    log.write(b"one\n")
    log.write(b"two\n")
    assert len(errors.messages) == 1 and str(path) in errors.messages[0]
    if target == "file":
        assert victim.read_text() == "keep me\n"
    else:
        assert not victim.is_file()


# ----- the relay: framing lines from a pipe ----------------------------------------


class Pipe:
    """A pipe whose read end a StreamRelay reads; the test writes, then calls on_readable."""

    def __init__(self, tmp_path: Path, format: LogFormat = LogFormat.TEXT, echo: Optional[bytes] = None) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.logs = NodeLogs(lambda path, message: None)
        spec = LogSpec(dir=str(tmp_path / "logs"), max_bytes=0, backups=0, format=format)
        self.log: Optional[NodeLog] = self.logs.acquire("sup/w", "t", spec, 1)
        self.path = Path(log_path(spec.dir, "sup/w"))
        self.ended = False
        self.relay = StreamRelay(self.read_fd, "stdout", 321, self.log, echo, Stamps(), self._eof)

    def _eof(self, relay: StreamRelay) -> None:
        self.ended = True
        os.close(self.read_fd)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view[:65536])
            view = view[written:]
            self.pump()

    def pump(self) -> None:
        """What the loop does: one read per readable event, until nothing is left to read."""
        while not self.ended and select.select([self.read_fd], [], [], 0)[0]:
            self.relay.on_readable()

    def close(self) -> None:
        os.close(self.write_fd)
        self.pump()

    def records(self) -> List[re.Match]:
        found = [TEXT_RECORD.match(line) for line in self.path.read_text().split("\n")[:-1]]
        assert all(found), self.path.read_text()[:500]
        return [match for match in found if match is not None]


def test_relay_lines_in_random_chunks_arrive_once_in_order(tmp_path):
    pipe = Pipe(tmp_path)
    lines = [f"line {n} {'y' * random.randrange(0, 300)}" for n in range(20000)]
    data = "".join(line + "\n" for line in lines).encode()
    rng = random.Random(7)
    at = 0
    while at < len(data):
        size = rng.choice([1, 2, 50, 999, 4096, 70000])
        pipe.send(data[at:at + size])
        at += size
    pipe.close()
    records = pipe.records()
    assert [match.group(5) for match in records] == lines
    assert {match.group(4) for match in records} == {"|"} and {match.group(3) for match in records} == {"321"}
    assert pipe.ended


def test_relay_keeps_a_last_line_without_newline_at_eof(tmp_path):
    pipe = Pipe(tmp_path)
    pipe.send(b"first\nno newline")
    assert [m.group(5) for m in pipe.records()] == ["first"]
    pipe.close()
    assert [m.group(5) for m in pipe.records()] == ["first", "no newline"]


@pytest.mark.parametrize("format", list(LogFormat))
def test_relay_cuts_a_long_line_into_continued_pieces(tmp_path, format):
    pipe = Pipe(tmp_path, format)
    long_line = "é" * (MAX_LINE * 2 // 2 + 10)  # two bytes each: pieces must not split one
    pipe.send(b"short\n" + long_line.encode() + b"\nafter\n")
    pipe.close()
    if format is LogFormat.JSON:
        records = [json.loads(line) for line in pipe.path.read_text().splitlines()]
        pieces = [(record["line"], record.get("continued", False)) for record in records]
        assert all(set(record) <= {"ts", "tree", "path", "pid", "stream", "line", "continued"} for record in records)
    else:
        pieces = [(m.group(5), m.group(4) == "+") for m in pipe.records()]
    assert pieces[0] == ("short", False) and pieces[-1] == ("after", False)
    middle = pieces[1:-1]
    assert len(middle) >= 2 and "".join(text for text, _ in middle) == long_line
    assert [continued for _, continued in middle] == [False] + [True] * (len(middle) - 1)
    assert all(len(text.encode()) <= MAX_LINE for text, _ in middle)


def test_relay_echo_prefixes_lines_and_pieces(tmp_path, monkeypatch):
    echoed: List[bytes] = []
    monkeypatch.setattr("orchestrator.engine.relay.write_out", echoed.append)
    pipe = Pipe(tmp_path, echo=b"sup/w | ")
    pipe.send(b"a\nb")
    pipe.send(b"c\n" + b"z" * (MAX_LINE + 5) + b"\n")
    pipe.close()
    shown = b"".join(echoed).split(b"\n")[:-1]
    assert shown[:2] == [b"sup/w | a", b"sup/w | bc"]
    assert all(line.startswith(b"sup/w | z") for line in shown[2:]) and len(shown) == 4


def test_node_log_is_shared_and_closed_when_retired_and_unused(tmp_path):
    logs = NodeLogs(lambda path, message: None)
    spec = LogSpec(dir=str(tmp_path), max_bytes=0, backups=0)
    first = logs.acquire("w", "t", spec, 2)
    assert first is not None and logs.acquire("w", "t", spec, 2) is first
    logs.retire("w")
    for _ in range(3):
        logs.release(first)
    assert logs.acquire("w", "t", spec, 1) is first  # brought back before its last relay ended
    assert logs.acquire("x", "t", LogSpec(dir=""), 1) is None
    changed = LogSpec(dir=str(tmp_path / "new"), max_bytes=0, backups=0, format=LogFormat.JSON)
    again = logs.acquire("w", "t", changed, 1)
    assert again is first and first.file.path == str(tmp_path / "new" / "w.log")
    assert first.format.format is LogFormat.JSON


def test_log_paths_are_subdirectories_of_the_log_dir():
    assert log_path("/var/log/orch/t", "pipeline/reader") == "/var/log/orch/t/pipeline/reader.log"
    assert log_path("/l", "web#0") == "/l/web#0.log"


# ----- ProcessWatch: a node's relays and log ----------------------------------------


class PipeStarter:
    """Starts no process: hands out Running-like records with real output pipes (their write ends kept)."""

    def __init__(self) -> None:
        self.writers: List[int] = []
        self.fds: List[int] = []

    def start(self, node, tree):
        exit_r, exit_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.writers += [out_w, err_w]
        self.fds += [exit_r, exit_w]
        return SimpleRunning(pid=4242, exit_fd=exit_r, stdout_fd=out_r, stderr_fd=err_r)


class SimpleRunning:
    def __init__(self, pid: int, exit_fd: int, stdout_fd: int, stderr_fd: int) -> None:
        self.pid, self.exit_fd, self.stdout_fd, self.stderr_fd = pid, exit_fd, stdout_fd, stderr_fd
        self.uplink = None


def test_process_watch_relays_what_is_left_when_it_closes(tmp_path, monkeypatch):
    from orchestrator.engine.loop import Loop
    from orchestrator.engine.slot import Slot
    from orchestrator.engine.watch import ProcessWatch
    from orchestrator.spec.model import NodeSpec, StartMethod, TreeContext

    echoed: List[bytes] = []
    monkeypatch.setattr("orchestrator.engine.relay.write_out", echoed.append)
    errors: List[tuple] = []
    loop, starter = Loop(), PipeStarter()
    try:
        watch = ProcessWatch(loop, starter, lambda slot: None, lambda slot, message: None,
                             on_log_error=lambda path, message: errors.append((path, message)))
        tree = TreeContext(name="t", start_method=StartMethod.FORK, plugins=(),
                           log=LogSpec(dir=str(tmp_path / "logs"), max_bytes=0, backups=0))
        slot = Slot(NodeSpec(name="w", path="sup/w", worker="t.sleep"))
        watch.start(slot, tree)
        os.write(starter.writers[0], b"out 1\nout partial")
        os.write(starter.writers[1], b"err 1\n")
        for fd in starter.writers:
            os.close(fd)
        watch.close()
        text = (tmp_path / "logs" / "sup" / "w.log").read_text()
        assert [line.split(" ", 1)[1] for line in text.splitlines()] == [
            "stdout 4242 | out 1", "stdout 4242 | out partial", "stderr 4242 | err 1"]
        assert errors == []
        if echoed:  # our stdout is not /dev/null here: the foreground view shows them too
            assert b"".join(echoed).splitlines() == [b"sup/w | out 1", b"sup/w | out partial", b"sup/w | err 1"]
    finally:
        for fd in starter.fds:
            os.close(fd)
        loop.close()
