"""The root's records of a running tree: events.jsonl, orch.log, and the plugins' event hooks.

Every supervisor reports up what happens to its children (messages.py); only
the root writes these two files, so each has a single writer and rotates safely
(engine/logfile.py), and only the root hands events to plugins (hookhost.py).
Records are stamped when they happen and written at the end of the loop's turn:
a killed worker's replacement is forked before its exit is written down.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, Optional

from orchestrator.engine import streams
from orchestrator.engine.logfile import LogFile, RecordFormat, Stamps
from orchestrator.engine.loop import Loop
from orchestrator.engine.messages import GaveUp, NodeEvent, Notice
from orchestrator.events import Event
from orchestrator.root.hookhost import HookHost, Hooks
from orchestrator.spec.model import LogSpec

EVENTS_NAME = "events.jsonl"
ORCH_LOG_NAME = "orch.log"


class EventLog:
    """Writes events and orch's own messages for one tree, and feeds the hook host."""

    def __init__(self, loop: Loop, tree: str, spec: LogSpec, hooks: Hooks) -> None:
        self.tree = tree
        self.spec = spec
        self.hooks = HookHost(loop, hooks, self._hook_report)
        self._loop = loop
        self._pending_events: List[Event] = []
        self._pending_orch: List[bytes] = []
        self._flush_due = False
        self._events: Optional[LogFile] = None
        self._orch: Optional[LogFile] = None
        self._formats: Dict[str, RecordFormat] = {}  # orch.log's, by the path of who said it
        self._stamps = Stamps()
        # While a problem with one of our files is being reported, say nothing more about it:
        # reporting writes to the same files.
        self._reporting = False

    def open(self) -> None:
        self._open_files()
        self.hooks.start()

    def configure(self, spec: LogSpec) -> None:
        """A reload changed the `[log]` table: the next records go where it says."""
        if spec != self.spec:
            self.flush()  # what happened before the reload goes where it was going
            self._close_files()
            self.spec = spec
            self._open_files()

    def close(self) -> None:
        while self._pending_events or self._pending_orch:
            self.flush()  # a failed write reports itself: once, so this ends
        self.hooks.close()
        self._close_files()

    def flush(self) -> None:
        """Write what this turn recorded: one write per file."""
        self._flush_due = False
        events, self._pending_events = self._pending_events, []
        lines, self._pending_orch = self._pending_orch, []
        if lines and self._orch is not None:
            self._orch.write_parts(lines)
        if events:
            if self._events is not None:
                self._events.write_parts([json.dumps(event.to_dict(), ensure_ascii=False).encode() + b"\n"
                                          for event in events])
            for event in events:
                self.hooks.deliver(event)

    def _flush_at_turn_end(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            self._loop.at_turn_end(self.flush)

    @property
    def dir(self) -> str:
        return self.spec.dir

    # ----- events -----------------------------------------------------------

    def node_event(self, message: NodeEvent, last_pid: Optional[int] = None) -> None:
        if message.event is not None:
            pid = message.pid if message.pid is not None else last_pid
            self.emit(message.path, message.event, pid=pid, exit_code=message.exit_code,
                      restarts=message.restarts, reason=message.reason)

    def notice(self, message: Notice) -> None:
        self.emit(message.path, message.event, pid=message.pid, exit_code=message.exit_code,
                  restarts=message.restarts, reason=message.reason)

    def gave_up(self, message: GaveUp) -> None:
        self.emit(message.path, "gave_up", reason=message.reason)

    def emit(self, path: str, kind: str, *, pid: Optional[int] = None, exit_code: Optional[int] = None,
             restarts: Optional[int] = None, reason: Optional[str] = None) -> None:
        """Record one event and hand it to the plugins. `exit_code` is multiprocessing's:
        a negative one is a death by that signal."""
        signum: Optional[int] = None
        if exit_code is not None and exit_code < 0:
            signum, exit_code = -exit_code, None
        self._pending_events.append(Event(ts=time.time(), tree=self.tree, path=path, event=kind, pid=pid,
                                          exit_code=exit_code, signal=signum, restarts=restarts, reason=reason))
        self._flush_at_turn_end()

    # ----- orch.log -----------------------------------------------------------

    def orch_line(self, path: str, pid: int, text: str) -> None:
        """One of orch's own messages, said by the supervisor of `path` (its pid): a record
        per line, in the format node logs have, with the stream word `orch`."""
        if self._orch is None:
            return
        form = self._formats.get(path)
        if form is None or form.format is not self.spec.format:
            form = self._formats[path] = RecordFormat(self.spec.format, self.tree, path)
        lines = "\n".join(text.splitlines() or [""]) + "\n"
        self._pending_orch.append(form.block(self._stamps.now(), "orch", pid, lines.encode(errors="replace")))
        self._flush_at_turn_end()

    # ----- files --------------------------------------------------------------

    def _open_files(self) -> None:
        if not self.spec.dir:
            return
        self._events = self._file(EVENTS_NAME, self._events_failed)
        self._orch = self._file(ORCH_LOG_NAME, self._orch_failed)

    def _file(self, name: str, on_error: Callable[[str], None]) -> LogFile:
        return LogFile(os.path.join(self.spec.dir, name), self.spec.max_bytes, self.spec.backups, on_error)

    def _close_files(self) -> None:
        for each in (self._events, self._orch):
            if each is not None:
                each.close()
        self._events = self._orch = None

    def _orch_failed(self, message: str) -> None:
        _to_stderr(message)
        self._report_once(lambda: self.emit("", "log_error", reason=message))

    def _events_failed(self, message: str) -> None:
        _to_stderr(message)
        self._report_once(lambda: self.orch_line("", os.getpid(), message))

    def _report_once(self, report: Callable[[], None]) -> None:
        if self._reporting:
            return
        self._reporting = True
        try:
            report()
        finally:
            self._reporting = False

    def _hook_report(self, kind: str, text: str) -> None:
        self.orch_line("", os.getpid(), text)
        _to_stderr(text)
        # A host that exited is no event of the tree; the events it missed are counted as lost.
        if kind != "hook_exit":
            self.emit("", kind, reason=text)


def _to_stderr(text: str) -> None:
    streams.sink(2).write(f"orch: {text}\n".encode(errors="replace"))
