"""Plugins' `orch_event` hooks, run in a process of their own that never forks.

The root hands each event to the host as one JSON line on a pipe it never blocks
on: while the host is busy (a hook that sleeps, a slow network call) events wait
in a bounded queue in the root, and past it they are dropped and counted. So no
hook ever delays a restart or a stop, and a hook that raises or kills its
process only costs events, never supervision. What goes wrong comes back as
`report(kind, text)`: `hook_error`, `events_lost`, `hook_exit`.
"""
from __future__ import annotations

import collections
import json
import os
import select
import signal
import time
import traceback
from typing import Any, Callable, Deque, Dict, Optional, Sequence, Tuple

from orchestrator.engine import osproc
from orchestrator.engine import spawn
from orchestrator.engine.loop import Loop, Timer
from orchestrator.events import Event
from orchestrator.spec.model import StartMethod

Hooks = Sequence[Tuple[str, Callable[..., Any]]]
Report = Callable[[str, str], None]

# Events waiting in the root for a host that does not keep up (beyond the pipe's 64 KiB);
# past it they are dropped and counted. ORCH_HOOK_QUEUE sets another bound.
MAX_QUEUED = 10_000
QUEUE_ENV = "ORCH_HOOK_QUEUE"
# At the end of a run the host gets this long to deliver what is queued, then it is killed:
# a blocked hook must not hold up `orch down`.
FINAL_GRACE = 1.0
# A host that died is started again after this long (its queue kept, bounded as ever).
RESTART_DELAY = 1.0
# The longest report line kept while its end has not come.
MAX_REPORT = 64 * 1024
# A hook failing on every event is reported at most this often; the rest are counted.
REPORT_EVERY = 1.0


class HookHost:
    """The root's side: starts the host, feeds it, restarts it, reports what it says."""

    def __init__(self, loop: Loop, hooks: Hooks, report: Report) -> None:
        self._loop = loop
        self._hooks = tuple(hooks)
        self._report = report
        self._queue: Deque[bytes] = collections.deque()
        self._limit = _queue_limit()
        self._lost = 0
        self._process: Optional[Any] = None  # multiprocessing's Process
        self._events_fd: Optional[int] = None  # write end of the events pipe
        self._reports_fd: Optional[int] = None  # read end of the reports pipe
        self._reports = bytearray()
        self._exit_fd: Optional[int] = None
        self._owns_exit_fd = False
        self._writing = False
        self._restart: Optional[Timer] = None
        self._closed = False

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the host process if any plugin implements `orch_event` (else no process at all)."""
        if not self._hooks or self._closed:
            return
        events_r, events_w = os.pipe()
        reports_r, reports_w = os.pipe()
        process = spawn.mp_context(StartMethod.FORK).Process(
            target=_host_main, args=(events_r, reports_w, self._hooks, os.getpid()), name="orch:hooks")
        try:
            with osproc.signals_blocked():
                process.start()
        finally:
            os.close(events_r)
            os.close(reports_w)
        # We reap it ourselves (see spawn.start_node for why it leaves this set).
        import multiprocessing.process
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]  # private
        assert process.pid is not None
        self._process = process
        self._events_fd, self._reports_fd = events_w, reports_r
        os.set_blocking(events_w, False)
        os.set_blocking(reports_r, False)
        self._exit_fd, self._owns_exit_fd = osproc.open_exit_fd(process.pid, process.sentinel)
        self._loop.add_reader(self._exit_fd, self._on_exit)
        self._loop.add_reader(reports_r, self._on_reports)
        self._flush()

    def deliver(self, event: Event) -> None:
        """Queue `event` for the hooks; never blocks."""
        if self._closed or not self._hooks:
            return
        if len(self._queue) >= self._limit:
            self._lost += 1
            return
        self._queue.append(json.dumps(event.to_dict()).encode() + b"\n")
        self._flush()

    def close(self) -> None:
        """End of the run: give the host FINAL_GRACE to deliver what is queued, then stop it."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        if self._process is None:
            return
        deadline = time.monotonic() + FINAL_GRACE
        self._set_writing(False)
        while self._queue and self._events_fd is not None and time.monotonic() < deadline:
            select.select([], [self._events_fd], [], max(0.0, deadline - time.monotonic()))
            self._write_some()
        self._close_events()
        assert self._exit_fd is not None
        select.select([self._exit_fd], [], [], max(0.0, deadline - time.monotonic()))
        osproc.send(self._process.pid, signal.SIGKILL)  # gone already, or stuck in a hook
        self._on_reports()
        self._reap()

    # ----- writing events ------------------------------------------------------

    def _flush(self) -> None:
        if self._events_fd is None:
            return
        self._write_some()
        self._set_writing(bool(self._queue))
        if not self._queue and self._lost:
            lost, self._lost = self._lost, 0
            self._report("events_lost", f"{lost} event{'s' if lost != 1 else ''} were not delivered to "
                                        f"plugins' orch_event hooks: they did not keep up (at most "
                                        f"{self._limit} wait)")

    def _write_some(self) -> None:
        while self._queue and self._events_fd is not None:
            head = self._queue[0]
            try:
                written = os.write(self._events_fd, head)
            except BlockingIOError:
                return
            except OSError:
                self._close_events()  # the host is gone; its exit handler restarts it
                return
            if written < len(head):
                self._queue[0] = head[written:]
                return
            self._queue.popleft()

    def _set_writing(self, wanted: bool) -> None:
        if self._events_fd is None or wanted == self._writing:
            return
        self._loop.set_writer(self._events_fd, self._flush if wanted else None)
        self._writing = wanted

    def _close_events(self) -> None:
        if self._events_fd is not None:
            self._set_writing(False)
            os.close(self._events_fd)
            self._events_fd = None

    # ----- what the host says, and its exit -----------------------------------

    def _on_reports(self) -> None:
        if self._reports_fd is None:
            return
        while True:
            try:
                data = os.read(self._reports_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._reports += data
        *lines, rest = bytes(self._reports).split(b"\n")
        # Only our host writes here, but plugin code runs in it: a line this long is nothing of ours.
        self._reports = bytearray(rest if len(rest) <= MAX_REPORT else b"")
        for line in lines:
            try:
                kind, text = json.loads(line)
            except (ValueError, TypeError):
                continue  # only our host writes here; a torn line is not worth a crash
            self._report(str(kind), str(text))

    def _on_exit(self) -> None:
        self._on_reports()
        code = self._reap()
        if self._closed:
            return
        self._report("hook_exit", f"the process running plugins' orch_event hooks exited ({_describe(code)}); "
                                  f"starting it again in {RESTART_DELAY:g}s")
        self._restart = self._loop.call_later(RESTART_DELAY, self._restarted)

    def _restarted(self) -> None:
        self._restart = None
        self.start()

    def _reap(self) -> Optional[int]:
        process = self._process
        if process is None:
            return None
        if self._exit_fd is not None:
            self._loop.remove_reader(self._exit_fd)
            if self._owns_exit_fd:
                os.close(self._exit_fd)
            self._exit_fd = None
        if self._reports_fd is not None:
            self._loop.remove_reader(self._reports_fd)
            os.close(self._reports_fd)
            self._reports_fd = None
        self._close_events()
        process.join()
        code = process.exitcode
        process.close()
        self._process = None
        return code


def _queue_limit() -> int:
    value = os.environ.get(QUEUE_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_QUEUED


def _describe(code: Optional[int]) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ----- the host process ---------------------------------------------------------


def _host_main(events_fd: int, reports_fd: int, hooks: Hooks, root_pid: int) -> None:
    """Read events until the root closes the pipe; call every hook with each."""
    signal.set_wakeup_fd(-1)
    for signum in osproc.BLOCKED_AROUND_FORK:
        signal.signal(signum, signal.SIG_DFL)
    osproc.die_with_parent(root_pid, signal.SIGKILL)
    # Own group: a signal meant for the root's group does not end the hooks before it does.
    os.setpgid(0, 0)
    osproc.close_fds_except([events_fd, reports_fd])
    osproc.set_process_name("orch hooks")
    osproc.unblock_handled_signals()
    reporter = _Reporter(reports_fd)
    with os.fdopen(events_fd, "rb") as events:
        for line in events:
            try:
                event = Event.from_dict(json.loads(line))
            except ValueError:
                continue
            for name, hook in hooks:
                try:
                    hook(event=event)
                except Exception:  # noqa: BLE001 - a plugin's failure is reported, never fatal
                    # An error while handling a hook_error would report itself forever.
                    if event.event != "hook_error":
                        reporter.failed(name, event, traceback.format_exc(limit=5))


class _Reporter:
    """Hook failures back to the root, at most one per plugin per REPORT_EVERY, the rest counted."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._last: Dict[str, float] = {}
        self._held: Dict[str, int] = {}

    def failed(self, plugin: str, event: Event, details: str) -> None:
        now = time.monotonic()
        if now - self._last.get(plugin, -REPORT_EVERY) < REPORT_EVERY:
            self._held[plugin] = self._held.get(plugin, 0) + 1
            return
        self._last[plugin] = now
        more = self._held.pop(plugin, 0)
        summary = details.strip().splitlines()[-1] if details.strip() else "error"
        text = (f"plugin {plugin!r}: orch_event raised on {event.event!r} of "
                f"{event.path or 'the root'!s}: {summary}"
                + (f" ({more} more failure{'s' if more != 1 else ''} not reported)" if more else ""))
        try:
            os.write(self._fd, json.dumps(["hook_error", text]).encode() + b"\n")
        except OSError:
            pass  # the root is gone; the parent-death signal ends us
