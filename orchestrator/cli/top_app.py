"""`orch top`'s loop: keys and refreshes in one `select`, drawn with rich's `Live` on the alternate screen.

rich's `Live` (not textual): the screen is a list of lines redrawn whole, and the
keys are a handful read in this loop, so a widget framework with its own event loop
and threads would add startup time and CPU for nothing. `Live` gives the alternate
screen, the hidden cursor and a redraw cut to the terminal's current size (so a
resize only needs a redraw); it runs with `auto_refresh=False`, so no thread draws
behind our back. The terminal is put in cbreak mode (keys one by one, no echo; Ctrl-C
still raises SIGINT) and everything is restored on the way out, exception or not.
"""
from __future__ import annotations

import os
import select
import sys
import time
from typing import List, Optional, Set, Tuple

from rich.console import Console
from rich.live import Live

from orchestrator.cli.top_data import EventFeed, LastLines, LogView, Tree
from orchestrator.cli.top_keys import decode
from orchestrator.cli.top_model import (Cursor, Line, RestartWindow, build_lines, event_texts, group_key,
                                        totals)
from orchestrator.cli.top_render import LogScreen, TreeScreen, layout, render_log, render_tree
from orchestrator.cli.top_term import cbreak, drain, wakeups
from orchestrator.errors import EXIT_OK, RuntimeFailure
from orchestrator.root import control

FETCH_EVERY = 1.0  # the tree is asked for at least this often
MIN_FETCH_GAP = 0.25  # and, when events.jsonl says something happened, at most this often,
COST_FACTOR = 25  # and never sooner than 25 times the CPU time the last refresh took (<= 4% of a core)
TICK = 0.25  # how often events.jsonl and a followed log are looked at
QUESTIONS = {"restart": "Restart {path}{below}? [y/n]", "stop": "Stop {path}{below} and keep it stopped (held)? [y/n]"}


class TreeStopped(Exception):
    """The tree's root stopped answering for good: its socket is gone."""


class Top:
    """The state of one `orch top` session and what each key and tick does to it."""

    def __init__(self, tree: Tree, console: Console) -> None:
        self.tree = tree
        self.console = console
        self.directory = tree.log_dir()
        self.events = EventFeed(self.directory)
        self.restarts = RestartWindow()
        self.restarts.seed(self.events.recent_restarts)
        self.last_lines = LastLines(self.directory, tree.name)
        self.cursor = Cursor()
        self.expanded: Set[str] = set()
        self.folded: Set[str] = set()
        self.rows: List[dict] = []
        self.lines: List[Line] = []
        self.file = ""
        self.message = ""
        self.pending: Optional[Tuple[str, str]] = None  # (command, path) waiting for y/n
        self.log: Optional[LogView] = None
        self.quit = False
        self.last_fetch = -FETCH_EVERY
        self.next_tick = 0.0
        self.soon = False  # something changed: fetch again as soon as `gap` allows
        self.gap = MIN_FETCH_GAP

    # ----- data ---------------------------------------------------------------------------

    def fetch(self) -> None:
        self.last_fetch = time.monotonic()
        self.soon = False
        try:
            reply = self.tree.snapshot()
        except control.NotRunning:
            raise TreeStopped() from None
        except RuntimeFailure as error:
            self.message = str(error)
            return
        self.rows, self.file = reply["nodes"], reply.get("file") or ""
        self.restarts.observe(self.rows, time.time())
        self.rebuild()

    def rebuild(self) -> None:
        self.lines = build_lines(self.rows, self.expanded, self.folded)
        self.cursor.place(self.lines, self.body())

    def tick(self) -> bool:
        """Look at the files and fetch the tree if due; whether the screen changed."""
        now = time.monotonic()
        changed = False
        if now >= self.next_tick:
            self.next_tick = now + TICK
            if self.events.poll():
                self.soon = changed = True
            if self.log is not None and self.log.poll():
                changed = True
        since = now - self.last_fetch
        if since >= FETCH_EVERY or (self.soon and since >= self.gap):
            self.fetch()
            self.events.poll()  # what led to the state just fetched, shown with it
            changed = True
        return changed

    def refreshed(self, cost: float) -> None:
        """A fetch and its redraw took `cost` seconds of CPU: the soonest next one on a change."""
        self.gap = min(FETCH_EVERY, max(MIN_FETCH_GAP, COST_FACTOR * cost))

    def timeout(self) -> float:
        """Seconds the loop may wait for a key before `tick` has work."""
        fetch_at = self.last_fetch + (self.gap if self.soon else FETCH_EVERY)
        return max(0.0, min(self.next_tick, fetch_at) - time.monotonic())

    # ----- keys ---------------------------------------------------------------------------

    def key(self, key: str) -> None:
        if self.log is not None:
            self.log_key(key)
        elif self.pending is not None:
            self.answer(key)
        else:
            self.tree_key(key)

    def tree_key(self, key: str) -> None:
        body = self.body()
        moves = {"up": -1, "k": -1, "down": 1, "j": 1, "pgup": -body, "pgdn": body}
        self.message = ""
        if key in moves:
            self.cursor.move(moves[key], self.lines, body)
        elif key in ("home", "g", "end", "G"):
            self.cursor.jump(0 if key in ("home", "g") else -1, self.lines, body)
        elif key in ("enter", "space"):
            self.toggle()
        elif key in ("r", "s", "l"):
            self.act(key)
        elif key == "q":
            self.quit = True

    def toggle(self) -> None:
        line = self.selected()
        if line is None:
            return
        if line.group:
            self.expanded.symmetric_difference_update({line.key})
        elif line.foldable:
            self.folded.symmetric_difference_update({line.key})
        else:
            group = group_key(line.rows[0])
            if group is None or group not in self.expanded:
                return
            self.expanded.discard(group)
            self.cursor.key = group  # back on the group's line
        self.rebuild()

    def act(self, key: str) -> None:
        line = self.selected()
        if line is None:
            return
        row = line.row
        if row is None:
            self.message = f"{line.name} is a group of replicas: Enter expands it, then pick one"
        elif row.get("kind") not in ("worker", "supervisor"):
            self.message = f"{row['name']} is a {row.get('kind')}, not a node of the tree"
        elif key == "l":
            self.open_log(row)
        elif not row["path"]:
            self.message = "the root is restarted or stopped with the tree: `orch down`, then `orch up`"
        elif key == "s" and row.get("held"):
            self.message = self.tree.command("start", row["path"])
            self.soon = True
        else:
            command = "restart" if key == "r" else "stop"
            below = " and its subtree" if row.get("kind") == "supervisor" else ""
            self.pending = (command, row["path"])
            self.message = QUESTIONS[command].format(path=row["path"], below=below)

    def answer(self, key: str) -> None:
        assert self.pending is not None
        command, path = self.pending
        self.pending = None
        if key in ("y", "Y"):
            self.message = self.tree.command(command, path)
            self.soon = True
        else:
            self.message = f"{command} {path}: cancelled"

    def open_log(self, row: dict) -> None:
        if row.get("kind") == "supervisor":
            self.message = f"{row['path'] or self.tree.name} is a supervisor: its workers have the logs"
            return
        self.log = LogView(self.directory, self.tree.name, row["path"], self.console.size.height)

    def log_key(self, key: str) -> None:
        assert self.log is not None
        rows = max(1, self.console.size.height - 2)
        steps = {"up": 1, "k": 1, "down": -1, "j": -1, "pgup": rows, "pgdn": -rows}
        if key in ("esc", "q"):
            self.log.close()
            self.log = None
        elif key in steps:
            self.log.scroll = max(0, min(self.log.scroll + steps[key], len(self.log.lines) - rows))
        elif key in ("end", "G"):
            self.log.scroll = 0
        elif key in ("home", "g"):
            self.log.scroll = max(0, len(self.log.lines) - rows)

    # ----- drawing ------------------------------------------------------------------------

    def selected(self) -> Optional[Line]:
        return self.lines[self.cursor.index] if self.lines else None

    def body(self) -> int:
        return layout(self.console.size.height)[0]

    def draw(self, live: Live) -> None:
        width, height = self.console.size
        if self.log is not None:
            log = self.log
            live.update(render_log(LogScreen(log.path, log.file_name, list(log.lines), log.scroll), width, height),
                        refresh=True)
            return
        self.cursor.place(self.lines, self.body())
        shown = self.lines[self.cursor.top:self.cursor.top + self.body()]
        last = {line.rows[0]["path"]: self.last_lines.get(line.rows[0]["path"]) or ""
                for line in shown if line.row is not None and line.rows[0].get("kind") == "worker"}
        screen = TreeScreen(self.tree.name, self.file, self.lines, self.cursor.index, self.cursor.top, last,
                            totals(self.rows), self.restarts.count(time.time()),
                            event_texts(list(self.events.latest)[-layout(height)[1]:], self.tree.name),
                            self.message, self.pending is not None, time.strftime("%H:%M:%S"))
        live.update(render_tree(screen, width, height), refresh=True)


# ----- the terminal ---------------------------------------------------------------------------


def run(name: str) -> int:
    """The session on this process's terminal (stdin and stdout are one); its exit code."""
    console = Console(highlight=False)
    top = Top(Tree(name), console)
    try:
        top.fetch()  # a tree that is not running is reported before the screen changes
    except TreeStopped:
        raise RuntimeFailure(f"tree {name!r} is not running") from None
    try:
        with cbreak(sys.stdin.fileno()), wakeups() as wake, Live(
                console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                redirect_stderr=False) as live:
            _loop(top, live, sys.stdin.fileno(), wake)
    except TreeStopped:
        print(f"orch: tree {name!r} stopped; orch top ends", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # Ctrl-C quits as `q` does
    finally:
        top.events.close()
        if top.log is not None:
            top.log.close()
    return EXIT_OK


def _loop(top: Top, live: Live, keys: int, wake: int) -> None:
    top.draw(live)
    while not top.quit:
        ready = select.select([keys, wake], [], [], top.timeout())[0]
        dirty = False
        if wake in ready:
            drain(wake)
            dirty = True  # a resize (SIGWINCH): draw again at the new size
        if keys in ready:
            data = os.read(keys, 1024)
            if not data:
                return  # the terminal is gone
            for key in decode(data):
                top.key(key)
            dirty = True
        if top.quit:
            return
        started, fetched = time.process_time(), top.last_fetch
        if top.tick() or dirty:
            top.draw(live)
        if top.last_fetch != fetched:
            top.refreshed(time.process_time() - started)
