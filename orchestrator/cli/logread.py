"""Reading a tree's log directory: parse records, tail files with their rotated backups, merge by time, follow.

The files (written by the supervisors and the root): `<node path>.log` per worker,
`orch.log` for orch's own messages, `events.jsonl`; each rotated by rename to
`<file>.1` (newest backup) .. `<file>.N` (oldest). Nothing here prints: `logs.py` does.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, Generic, Iterable, Iterator, List, Optional, Sequence, TypeVar

import attrs

from orchestrator.errors import UsageError
from orchestrator.events import Event, parse_rfc3339

ORCH_LABEL = "orch"  # how orch.log's records are labelled and selected
ORCH_FILE = "orch.log"
EVENTS_FILE = "events.jsonl"
LOG_SUFFIX = ".log"
BLOCK = 64 * 1024
MAX_BACKUPS = 1000  # a tree keeps `[log] backups` of them (5 by default); this only bounds a loop

T = TypeVar("T")


# ----- records ---------------------------------------------------------------------


@attrs.frozen
class Record:
    """One record of a .log file. `ts` is None for a line that does not parse (shown as is)."""

    at: float  # ordering time: the record's ts; for an unparsed line, the record's before it
    label: str  # the node path, or "orch" for orch.log
    line: str
    tree: str
    path: str
    ts: Optional[str] = None  # as written
    pid: Optional[int] = None
    stream: Optional[str] = None
    continued: bool = False

    def to_json(self) -> Dict[str, Any]:
        """The JSON form of the record, whatever the file's format."""
        data: Dict[str, Any] = {"ts": self.ts, "tree": self.tree, "path": self.path, "pid": self.pid,
                                "stream": self.stream, "line": self.line}
        if self.continued:
            data["continued"] = True
        return data


def parse_record(text: str, label: str, tree: str, fallback: float = math.nan) -> Record:
    """A text or JSON record; a line that is neither is kept as is, ordered at `fallback`."""
    path = "" if label == ORCH_LABEL else label
    record = _parse_json(text, label, tree, path) if text.startswith("{") else None
    return record or _parse_text(text, label, tree, path) or Record(
        at=fallback, label=label, line=text, tree=tree, path=path)


def _parse_text(text: str, label: str, tree: str, path: str) -> Optional[Record]:
    """`<ts> <stream> <pid> | <line>` (` + ` on a continuation piece)."""
    parts = text.split(" ", 4)
    if len(parts) < 4 or parts[3] not in ("|", "+") or not parts[2].isdigit() or not parts[1]:
        return None
    try:
        at = parse_rfc3339(parts[0])
    except ValueError:
        return None
    return Record(at=at, label=label, line=parts[4] if len(parts) == 5 else "", tree=tree, path=path,
                  ts=parts[0], pid=int(parts[2]), stream=parts[1], continued=parts[3] == "+")


def _parse_json(text: str, label: str, tree: str, path: str) -> Optional[Record]:
    try:
        data = json.loads(text)
        ts, line = data["ts"], data["line"]
        at = parse_rfc3339(ts)
    except (ValueError, KeyError, TypeError):
        return None
    pid, stream = data.get("pid"), data.get("stream")
    if not isinstance(line, str) or (pid is not None and type(pid) is not int):
        return None
    return Record(at=at, label=label, line=line, ts=ts, pid=pid,
                  stream=stream if isinstance(stream, str) else None,
                  tree=data.get("tree") if isinstance(data.get("tree"), str) else tree,
                  path=data.get("path") if isinstance(data.get("path"), str) else path,
                  continued=data.get("continued") is True)


def fill_times(records: List[Record]) -> List[Record]:
    """Order unparsed lines (oldest first in `records`) with the parsed record before them,
    or, at the start of a file, the first one after them."""
    known = [record.at for record in records if record.ts is not None]
    previous = known[0] if known else 0.0
    filled = []
    for record in records:
        if record.ts is None:
            record = attrs.evolve(record, at=previous)
        previous = record.at
        filled.append(record)
    return filled


def merge(groups: Iterable[List[Record]]) -> List[Record]:
    """Every group's records in one list by time; equal times keep their order (a stable sort)."""
    return sorted((record for group in groups for record in group), key=lambda record: record.at)


# ----- the directory -------------------------------------------------------------------


def node_files(directory: Path) -> Dict[str, Path]:
    """Label -> current file of every .log file below `directory` (`orch` for orch.log)."""
    found: Dict[str, Path] = {}
    for folder, subdirs, files in os.walk(directory):
        subdirs.sort()
        for name in sorted(files):
            if name.endswith(LOG_SUFFIX):
                file = Path(folder) / name
                label = file.relative_to(directory).as_posix()[:-len(LOG_SUFFIX)]
                found[ORCH_LABEL if label == ORCH_FILE[:-len(LOG_SUFFIX)] else label] = file
    return found


def covers(wanted: str, label: str) -> bool:
    """Whether PATH `wanted` selects `label`: itself, a node below it, or one of its replicas."""
    return label == wanted or label.startswith(wanted + "/") or label.startswith(wanted + "#")


class Selection:
    """The labels PATH arguments name; no PATH selects the whole tree, orch.log included."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [path.strip("/") for path in paths]

    def __call__(self, label: str) -> bool:
        return not self.paths or any(covers(path, label) for path in self.paths)

    def check(self, directory: Path, labels: Iterable[str], nodes: Callable[[], Iterable[str]]) -> None:
        """UsageError for a PATH that matches no file, no directory and no node of the running tree."""
        labels = sorted(labels)
        unknown = [path for path in self.paths if not any(covers(path, label) for label in labels)
                   and not (path and (directory / path).is_dir())]
        if unknown:
            known = sorted(set(labels) | set(nodes()))
            unknown = [path for path in unknown if not any(covers(path, label) for label in known)]
        if unknown:
            names = ", ".join(repr(path) for path in unknown)
            listing = ", ".join(known) if known else "none yet"
            raise UsageError(f"no node {names} in the logs in {directory}; known: {listing}")


# ----- one file ------------------------------------------------------------------------


class LogFile:
    """A log file read from the end back (its backups after it) and then followed.

    The file is opened once: the tail stops where following starts, so no record is
    shown twice or lost in between. Following survives restarts (the same file grows),
    rotation (the file renamed to `.1` and a new one created: the old fd is read to its
    end, then the new file from its start) and a file that does not exist yet.
    """

    def __init__(self, path: Path, from_start: bool = False) -> None:
        self.path = path
        self._file: Optional[Any] = None
        self._pos = 0
        self._partial = b""
        self._end = 0  # where the tail stops: after the last complete line when opened
        self._size = 0  # the size when opened
        if self._open() and not from_start:
            assert self._file is not None
            self._size = os.fstat(self._file.fileno()).st_size
            self._end = self._pos = _after_last_newline(self._file, self._size)

    def _open(self) -> bool:
        try:
            self._file = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            return False
        self._pos, self._partial = 0, b""
        return True

    def backwards(self, partial: bool = False) -> Iterator[str]:
        """Lines newest first: this file up to where following starts (and the line being
        written after it, if `partial`), then the backups `.1`, `.2`, ... while they exist."""
        if self._file is None:
            return
        if partial and self._size > self._end:
            self._file.seek(self._end)
            yield _decode(self._file.read(self._size - self._end))
        yield from _lines_backwards(self._file, self._end)
        for number in range(1, MAX_BACKUPS + 1):
            try:
                with open(f"{self.path}.{number}", "rb") as backup:
                    yield from _lines_backwards(backup, os.fstat(backup.fileno()).st_size)
            except FileNotFoundError:
                return

    def read_new(self) -> List[str]:
        """The complete lines written since the last call, across a rotation or truncation."""
        if self._file is None:
            return self._read() if self._open() else []
        lines = self._read()
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return lines  # renamed away; the new file is not there yet
        mine = os.fstat(self._file.fileno())
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            lines += self._read()  # what the writer added before it rotated
            if self._partial:
                lines.append(_decode(self._partial))  # the old file is finished
            self.close()
            if self._open():
                lines += self._read()
        elif now.st_size < self._pos:  # truncated in place: start again
            self._pos, self._partial = 0, b""
            lines += self._read()
        return lines

    def _read(self) -> List[str]:
        assert self._file is not None
        self._file.seek(self._pos)
        chunks = [self._partial]
        while True:
            chunk = self._file.read(BLOCK)
            if not chunk:
                break
            chunks.append(chunk)
            self._pos += len(chunk)
        *complete, self._partial = b"".join(chunks).split(b"\n")
        return [_decode(line) for line in complete]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _after_last_newline(file: Any, size: int) -> int:
    position = size
    while position > 0:
        start = max(0, position - BLOCK)
        file.seek(start)
        found = file.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def _lines_backwards(file: Any, end: int) -> Iterator[str]:
    """The lines of file[0:end], newest first (a final newline ends the last line)."""
    position, rest = end, b""
    first = True
    while position > 0:
        start = max(0, position - BLOCK)
        file.seek(start)
        pieces = (file.read(position - start) + rest).split(b"\n")
        position, rest = start, pieces[0]
        for piece in reversed(pieces[1:]):
            if not (first and piece == b""):
                yield _decode(piece)
            first = False
    if rest or (end > 0 and not first):
        yield _decode(rest)


def take_back(lines: Iterator[str], parse: Callable[[str], T], keep: Callable[[T], bool],
              older: Callable[[T], bool], count: Optional[int]) -> List[T]:
    """From lines newest first: the last `count` (None: all) records `keep` accepts, up to
    the first one `older` than wanted; oldest first."""
    found: List[T] = []
    for line in lines:
        if count is not None and len(found) >= count:
            break
        record = parse(line)
        if older(record):
            break
        if keep(record):
            found.append(record)
    found.reverse()
    return found


# ----- following -------------------------------------------------------------------------


class Watcher(Generic[T]):
    """Follows the files `discover` names, opening files that appear later from their start."""

    def __init__(self, discover: Callable[[], Dict[str, Path]], parse: Callable[[str, str], T],
                 files: Optional[Dict[str, LogFile]] = None) -> None:
        self._discover = discover
        self._parse = parse
        self.files: Dict[str, LogFile] = dict(files or {})

    def poll(self) -> List[T]:
        """Every new record since the last poll, file by file."""
        for label, path in self._discover().items():
            if label not in self.files:
                self.files[label] = LogFile(path, from_start=True)
        return [self._parse(label, line) for label, file in self.files.items() for line in file.read_new()]

    def close(self) -> None:
        for file in self.files.values():
            file.close()


def follow(watcher: Watcher[T], emit: Callable[[List[T]], None], interval: float = 0.2,
           stop: Callable[[], bool] = lambda: False) -> None:
    """Poll `watcher` every `interval` seconds, handing each non-empty batch to `emit`,
    until `stop()` (checked after each poll) or an exception (KeyboardInterrupt)."""
    while True:
        batch = watcher.poll()
        if batch:
            emit(batch)
        if stop():
            return
        time.sleep(interval)


def event_fields(event: Event) -> str:
    """`pid=123 exit_code=1 signal=SIGKILL restarts=2`: the fields that apply, as `orch events` shows them."""
    return " ".join(f"{name}={value}" for name, value in (
        ("pid", event.pid), ("exit_code", event.exit_code), ("signal", _signal_name(event.signal)),
        ("restarts", event.restarts)) if value is not None)


def _signal_name(number: Optional[int]) -> Optional[str]:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
