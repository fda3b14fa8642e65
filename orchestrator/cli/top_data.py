"""What `orch top` reads: the tree (one `tree` request per refresh), node log tails, events.jsonl.

The root is asked only what a plain `orch tree` poll asks (`tree`; `ping` once for the
log directory) and the commands the user confirms; node logs and events are read
here, from the files, and only the tails of the visible nodes' files.
"""
from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Deque, Dict, List, Optional, Tuple

from orchestrator.cli import logread
from orchestrator.cli import remote
from orchestrator.cli.logread import LogFile
from orchestrator.errors import RuntimeFailure, UsageError
from orchestrator.events import Event
from orchestrator.cli.top_model import RESTART_WINDOW, is_restart_start

TAIL_BYTES = 4096  # the last line of a node's log is looked for in this much of its end first
KEEP_EVENTS = 50
KEEP_LOG_LINES = 2000


class Tree:
    """A running tree as the root answers for it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def log_dir(self) -> Optional[Path]:
        """The tree's log directory (`ping`, asked once); None when the tree writes no logs."""
        directory = remote.ask(self.name, {"cmd": "ping"}).get("log_dir")
        return Path(directory) if directory else None

    def snapshot(self) -> dict:
        """The `tree` reply: `file` and `nodes`. control.NotRunning once the tree is gone."""
        return remote.ask(self.name, {"cmd": "tree"})

    def command(self, command: str, path: str) -> str:
        """Send restart/stop/start without waiting for the tree to settle; what to tell the user."""
        try:
            reply = remote.ask(self.name, {"cmd": command, "path": path})
        except (UsageError, RuntimeFailure) as error:
            return f"{command} {path}: {error}"
        done = {"restart": "restarting", "stop": "stopping (held)", "start": "starting"}[command]
        return f"{command} {path}: {done}" + (f" (was pid {reply['pid']})" if reply.get("pid") else "")


def node_log(directory: Path, path: str) -> Path:
    return directory / (path + logread.LOG_SUFFIX)


class LastLines:
    """The last line of each node's log file, read again only when the file changed."""

    def __init__(self, directory: Optional[Path], tree: str) -> None:
        self.directory = directory
        self.tree = tree
        self._cache: Dict[str, Tuple[Tuple[int, int, int], str]] = {}

    def get(self, path: str) -> Optional[str]:
        if self.directory is None or not path:
            return None
        file = node_log(self.directory, path)
        try:
            info = os.stat(file)
        except OSError:
            return None
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        text = _last_line(file, info.st_size)
        line = logread.parse_record(text, path, self.tree).line if text is not None else ""
        self._cache[path] = (signature, line)
        return line


def _last_line(file: Path, size: int) -> Optional[str]:
    """The last complete non-empty line: from the file's last few KB, else read back in full."""
    try:
        with open(file, "rb") as handle:
            start = max(0, size - TAIL_BYTES)
            handle.seek(start)
            pieces = handle.read(size - start).split(b"\n")
    except OSError:
        return None
    complete = pieces[:-1] if start == 0 else pieces[1:-1]  # the first piece may be cut
    for piece in reversed(complete):
        if piece.strip():
            return piece.decode("utf-8", errors="replace")
    if start == 0:
        return None
    log = LogFile(file)
    try:
        found = logread.take_back(log.backwards(), str, lambda text: bool(text.strip()), lambda text: False, 1)
    finally:
        log.close()
    return found[0] if found else None


def parse_event(line: str) -> Optional[Event]:
    try:
        return Event.from_dict(json.loads(line))
    except (ValueError, TypeError, AttributeError):
        return None


def _known(event: Optional[Event]) -> bool:
    return event is not None


def _never(event: Optional[Event]) -> bool:
    return False


class EventFeed:
    """events.jsonl followed from its end: the latest events, and the restarts of the last minute."""

    def __init__(self, directory: Optional[Path]) -> None:
        self.latest: Deque[Event] = collections.deque(maxlen=KEEP_EVENTS)
        self.recent_restarts: List[float] = []  # times of the restarts recorded before we started
        self._file = LogFile(directory / logread.EVENTS_FILE) if directory is not None else None
        if self._file is None:
            return
        latest = logread.take_back(self._file.backwards(), parse_event, _known, _never, KEEP_EVENTS)
        self.latest.extend(event for event in latest if event is not None)
        since = time.time() - RESTART_WINDOW
        window = logread.take_back(self._file.backwards(), parse_event, _known,
                                   lambda event: event is not None and event.ts < since, None)
        self.recent_restarts = [event.ts for event in window if event is not None and is_restart_start(event)]

    def poll(self) -> List[Event]:
        """Events written since the last poll (also across a rotation of the file)."""
        if self._file is None:
            return []
        new = [event for event in map(parse_event, self._file.read_new()) if event is not None]
        self.latest.extend(new)
        return new

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class LogView:
    """One node's log for the `l` screen: its tail, then followed."""

    def __init__(self, directory: Optional[Path], tree: str, path: str, rows: int) -> None:
        self.path = path
        self.tree = tree
        self.lines: Deque[logread.Record] = collections.deque(maxlen=KEEP_LOG_LINES)
        self.file_name = str(node_log(directory, path)) if directory is not None else None
        self._file = LogFile(Path(self.file_name)) if self.file_name else None
        self.scroll = 0  # lines back from the end; 0 follows
        if self._file is not None:
            self.lines.extend(logread.fill_times(logread.take_back(
                self._file.backwards(), self._parse, lambda record: True, lambda record: False,
                max(rows, 200))))

    def _parse(self, text: str) -> logread.Record:
        return logread.parse_record(text, self.path, self.tree)

    def poll(self) -> bool:
        """Read what was written since; whether anything was."""
        if self._file is None:
            return False
        new = [self._parse(text) for text in self._file.read_new()]
        self.lines.extend(new)
        if self.scroll:
            self.scroll += len(new)  # keep what is on the screen where it is
        return bool(new)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
