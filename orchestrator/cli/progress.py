"""A progress line on a terminal while a command waits: `orch up --detach`, `down`, `reload`, `restart`.

The command's own wait is untouched (one request answered when done, a wait on pids,
a ready pipe); a daemon thread samples the tree at most `1 / INTERVAL` times a second
and redraws one line on stderr (carriage return, clear to end of line), erased when
the wait ends, before the command prints its summary. Only on a terminal: with
stderr not a TTY, `TERM=dumb` or `--json`, nothing is drawn and no thread starts.
A sample that fails (the root is not answering yet, a process vanished) keeps the
last line: the progress never changes what a command prints or its exit code.

Imported only by the commands that wait, never on the path of `orch up` itself.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, ContextManager, Dict, Iterable, List, Optional, TextIO

import psutil

from orchestrator.root import control
from orchestrator.root import livetree

INTERVAL = 0.25  # seconds between samples (and redraws): at most 4 a second
POLL_TIMEOUT = 2.0  # a `tree` request the root does not answer this fast is skipped
CLEAR = "\r\x1b[K"  # back to the start of the line, clear to its end

Sample = Callable[[], str]


def enabled(as_json: bool = False, out: Optional[TextIO] = None) -> bool:
    """Whether to draw: on a terminal that understands the clear-line sequence, never for JSON."""
    out = out or sys.stderr
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False
    return tty and not as_json and os.environ.get("TERM") != "dumb"


def showing(sample: Callable[[], Sample], as_json: bool = False,
            out: Optional[TextIO] = None) -> ContextManager[object]:
    """A context that draws `sample()`'s lines while its body waits, if `enabled`.

    `sample` is a factory, called only when the line is drawn: whatever it prepares (a
    first look at the tree) costs nothing on a pipe.
    """
    if not enabled(as_json, out):
        return contextlib.nullcontext()
    try:
        first = sample()
    except Exception:  # noqa: BLE001 - the command reports its own errors, as without a terminal
        return contextlib.nullcontext()
    return Progress(first, out or sys.stderr)


class Progress:
    """One line redrawn in place by a daemon thread: `<sample> (<elapsed>s)`, from the first
    sample that succeeds on."""

    def __init__(self, sample: Sample, out: TextIO, interval: float = INTERVAL) -> None:
        self.sample = sample
        self.text = ""
        self.out = out
        self.interval = interval
        self.started = time.monotonic()
        self.drawn = False
        self._done = threading.Event()
        self._lock = threading.Lock()  # a redraw and the final erase never interleave

    def __enter__(self) -> Progress:
        threading.Thread(target=self._run, name="orch-progress", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done.set()
            if self.drawn:
                self._write(CLEAR)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.text = self.sample()
            except Exception:  # noqa: BLE001 - a display must never disturb the command
                pass
            with self._lock:
                if self._done.is_set():
                    return
                if self.text:
                    self._write(CLEAR + fit(f"{self.text} ({time.monotonic() - self.started:.1f}s)",
                                            _columns(self.out)))
                    self.drawn = True

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self._done.set()  # the terminal is gone: stop drawing


def fit(line: str, columns: int) -> str:
    """`line` cut to one row of the terminal: a wrapped line cannot be redrawn with `\\r`."""
    return line if len(line) < columns else line[:max(columns - 4, 0)] + "..."


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


# ----- what is counted ------------------------------------------------------------------


def processes_gone(name: str, pids: Iterable[int]) -> Sample:
    """`orch down`: how many of the tree's processes have exited (psutil, no request)."""
    created = {pid: _create_time(pid) for pid in pids}

    def sample() -> str:
        gone = sum(1 for pid, when in created.items() if livetree.is_gone(pid, when))
        return f"orch: stopping tree {name!r}: {gone}/{len(created)} processes gone"
    return sample


def nodes_started(name: str, paths: Iterable[str], guardian_pid: int) -> Sample:
    """`orch up --detach`: how many nodes run below the `orch up` process just started.

    Counted from process titles (each node titles itself on boot), not over the control
    socket: a client that finds no socket may briefly take the run directory's lock to
    clean it up, which a root starting at that moment would take for another root.
    """
    from orchestrator.engine.titles import node_title

    titles = {node_title(name, path) for path in paths}

    def sample() -> str:
        try:
            below = psutil.Process(guardian_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            below = []
        started = sum(1 for proc in below if _title(proc) in titles)
        return f"orch: starting tree {name!r}: {started}/{len(titles)} nodes started"
    return sample


def nodes_settling(name: str, what: str, path: Optional[str] = None, count: str = "running") -> Sample:
    """`orch reload` (every node not held) and `orch restart|start|stop PATH` (PATH's subtree).

    `count` says which nodes are done: `running`; `again`, running in a process other than
    the one it had before the command (a restart); `stopped`, without a process. Polls
    `{"cmd": "tree"}` on a connection of its own, while the command's own connection waits
    for the root's one answer.
    """
    before = _pids(_nodes(name, path)) if count == "again" else {}

    def done(node: dict) -> bool:
        if count == "stopped":
            return node["pid"] is None
        return node["state"] == "running" and (count != "again" or node["pid"] != before.get(node["path"]))

    def sample() -> str:
        nodes = _nodes(name, path)
        verb = "stopped" if count == "stopped" else "running"
        return f"orch: {what}: {sum(1 for node in nodes if done(node))}/{len(nodes)} nodes {verb}"
    return sample


def _nodes(name: str, path: Optional[str]) -> List[dict]:
    """The tree's spec nodes (no helpers): under `path` (itself included), or all but the held ones."""
    nodes = control.request(name, {"cmd": "tree"}, timeout=POLL_TIMEOUT)["nodes"]
    return [node for node in nodes if node["kind"] in ("supervisor", "worker")
            and (_under(node["path"], path) if path is not None else not node.get("held"))]


def _under(node_path: str, path: str) -> bool:
    return not path or node_path == path or node_path.startswith(path + "/")


def _pids(nodes: List[dict]) -> Dict[str, Optional[int]]:
    return {node["path"]: node["pid"] for node in nodes}


def _create_time(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _title(proc: psutil.Process) -> str:
    try:
        # psutil splits a rewritten argv on spaces, or on the NULs padding it (empty parts)
        return " ".join(proc.cmdline()).rstrip()
    except psutil.Error:
        return ""

