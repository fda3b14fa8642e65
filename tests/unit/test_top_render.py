"""`orch top` without a terminal: fixed rows rendered to a fixed size and compared with the text
expected (snapshots), and the model under it: replica groups, folding, the cursor, keys, restarts."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from rich.console import Console

from orchestrator.cli.logread import parse_record
from orchestrator.cli.top_keys import decode
from orchestrator.cli.top_model import (Cursor, RestartWindow, build_lines, event_texts, figures, state_counts,
                                        totals)
from orchestrator.cli.top_render import LogScreen, TreeScreen, layout, render_log, render_tree
from orchestrator.events import Event

MB = 2 ** 20
REPO = Path(__file__).resolve().parents[2]


def row(path: str, kind: str = "worker", state: str = "running", pid=None, restarts: int = 0,
        uptime: float = 12.0, cpu: float = 0.0, rss: int = 20 * MB, **extra) -> dict:
    """A row as the root's `tree` reply has it (orchestrator/root/view.py), parsed from JSON."""
    data = dict(path=path, name=path.rpartition("/")[2] if path else "demo", kind=kind,
                parent=path.rpartition("/")[0] if path else None, pid=pid, ppid=None, state=state,
                restarts=restarts, failures=0, daemon=False, held=False, uptime=uptime if pid else None,
                ready=bool(pid) and kind != "helper", status=None, rss=rss if pid else None,
                cpu=cpu if pid else None, drift=False)
    data.update(extra)
    return data


ROWS = [
    row("", "supervisor", pid=100, cpu=1.5, rss=30 * MB, uptime=3725.0),
    row("clock", pid=101, status="tick 4"),
    row("pipeline", "supervisor", pid=102),
    row("pipeline/transform", state="backoff", restarts=3),
    row("pipeline/writer", state="stopped", held=True),
    row("pipeline/api", state="starting", pid=105, ready=False),
    dict(row("pipeline/~130", "helper", pid=130, state="sleeping"), name="resource_tracker"),
    row("web#0", pid=110), row("web#1", pid=111, restarts=1), row("web#2", state="failed", restarts=5),
    row("odd", pid=120, drift=True),
]
LAST_LINES = {"clock": "tick 4 (pid 101)", "pipeline/api": "waiting for the database"}
EVENTS = ["12:00:01  pipeline/transform  exited   exit_code=1",
          "12:00:01  pipeline/transform  backoff  restarts=3"]


def screen(lines, selected: int = 1, top: int = 0, **changes) -> TreeScreen:
    fields = dict(tree="demo", file="/srv/trees/demo.toml", lines=lines, selected=selected, top=top,
                  last_lines=LAST_LINES, totals=totals(ROWS), restarts=2, events=EVENTS, clock="12:00:02")
    fields.update(changes)
    return TreeScreen(**fields)


def text_of(renderable, width: int) -> str:
    """What a terminal `width` columns wide shows, without colors; trailing blanks dropped."""
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def expected(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# ----- snapshots ---------------------------------------------------------------------------------


def test_tree_screen_snapshot():
    shown = text_of(render_tree(screen(build_lines(ROWS)), 100, 22), 100)
    assert shown == expected("""
        orch top  tree demo  (/srv/trees/demo.toml)  12:00:02
        NODE                    STATE       RDY      PID    RST   UPTIME    CPU%      RSS  STATUS / LAST LO…
        demo                    running     yes      100      0    1h02m     1.5    30.0M
        ├─ clock                running     yes      101      0      12s     0.0    20.0M  (tick 4) tick 4 …
        ├─ pipeline             running     yes      102      0      12s     0.0    20.0M
        │  ├─ transform         backoff                -      3        -       -        -
        │  ├─ writer            held                   -      0        -       -        -
        │  ├─ api               starting    no       105      0      12s     0.0    20.0M  waiting for the …
        │  └─ resource_tracker  sleeping             130      0      12s     0.0    20.0M  helper
        ├─ ▸ web#0..#2 (3)      failed                 -      6      12s     0.0    40.0M  2 running, 1 fai…
        └─ odd                  drift       yes      120      0      12s     0.0    20.0M





        8 processes  6/10 nodes running  2 restarts in the last minute  rss 150.0M  cpu 1.5%
        ── latest events ───────────────────────────────────────────────────────────────────────────────────
        12:00:01  pipeline/transform  exited   exit_code=1
        12:00:01  pipeline/transform  backoff  restarts=3

        ↑↓/jk move  PgUp/PgDn  Enter expand/fold  r restart  s stop/start  l log  q quit
    """)


def test_expanded_group_folded_supervisor_scrolled_window_and_a_prompt():
    lines = build_lines(ROWS, expanded={"/web#"}, folded={"pipeline"})
    shown = text_of(render_tree(screen(lines, selected=4, top=2, message="Restart web#1? [y/n]", prompt=True),
                                90, 16), 90)
    assert shown == expected("""
        orch top  tree demo  (/srv/trees/demo.toml)  12:00:02
        NODE                STATE       RDY      PID    RST   UPTIME    CPU%      RSS  STATUS / L…
        ├─ ▸ pipeline (+4)  running     yes      102      0      12s     0.0    20.0M
        ├─ ▾ web#0..#2 (3)  failed                 -      6      12s     0.0    40.0M  2 running,…
        │  ├─ web#0         running     yes      110      0      12s     0.0    20.0M
        │  ├─ web#1         running     yes      111      1      12s     0.0    20.0M
        │  └─ web#2         failed                 -      5        -       -        -
        └─ odd              drift       yes      120      0      12s     0.0    20.0M




        8 processes  6/10 nodes running  2 restarts in the last minute  rss 150.0M  cpu 1.5%
        ── latest events ─────────────────────────────────────────────────────────────────────────
        12:00:01  pipeline/transform  backoff  restarts=3
        Restart web#1? [y/n]
    """)


def test_a_narrow_screen_drops_the_least_useful_columns_first():
    shown = text_of(render_tree(screen(build_lines(ROWS)[:4]), 60, 9), 60).splitlines()
    assert shown[1] == "NODE             STATE           PID    RST      RSS  STATU…"
    assert shown[3] == "├─ clock         running         101      0    20.0M  (tick…"
    wide = text_of(render_tree(screen(build_lines(ROWS)[:4]), 120, 9), 120).splitlines()
    assert wide[1].split() == ["NODE", "STATE", "RDY", "PID", "RST", "UPTIME", "CPU%", "RSS", "STATUS", "/",
                               "LAST", "LOG", "LINE"]


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC for the test (clocks on the screen are local)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "UTC")
    time.tzset()
    yield
    mp.undo()
    time.tzset()


def test_log_screen_snapshot(utc):
    records = [parse_record(text, "pipeline/api", "demo") for text in (
        "2026-12-02T12:00:01.000000Z stdout 105 | connecting",
        "2026-12-02T12:00:02.500000Z stderr 105 | database not ready, retrying",
        "not a record line")]
    shown = text_of(render_log(LogScreen("pipeline/api", "/logs/demo/pipeline/api.log", records, 0), 80, 6), 80)
    assert shown == expected("""
        log of pipeline/api  (/logs/demo/pipeline/api.log)  following
        12:00:01 out connecting
        12:00:02 err database not ready, retrying
        not a record line

        Esc/q back  ↑↓/PgUp/PgDn scroll  End follow
    """)
    scrolled = text_of(render_log(LogScreen("pipeline/api", None, records, 1), 80, 4), 80)
    assert scrolled.splitlines()[:3] == [
        "log of pipeline/api  (the tree writes no log files)  scrolled back 1 lines",
        "12:00:01 out connecting", "12:00:02 err database not ready, retrying"]


def test_events_are_aligned_with_signal_names(utc):
    events = [Event(ts=1_800_000_000.0, tree="demo", path="", event="ready", pid=100),
              Event(ts=1_800_000_001.0, tree="demo", path="pipeline/api", event="exited", pid=105, signal=9,
                    restarts=2, reason=None)]
    assert event_texts(events, "demo") == [
        "08:00:00  demo          ready   pid=100",
        "08:00:01  pipeline/api  exited  pid=105 signal=SIGKILL restarts=2"]


# ----- the model -----------------------------------------------------------------------------------


def names(lines) -> List[str]:
    return [line.prefix + line.name for line in lines]


def test_replicas_collapse_into_one_group_line_in_spec_order():
    lines = build_lines(ROWS)
    assert names(lines)[-2:] == ["├─ web#0..#2", "└─ odd"]
    group = lines[-2]
    assert group.group and group.row is None and len(group.rows) == 3
    numbers = figures(group)
    assert (numbers.state, numbers.restarts, numbers.rss, numbers.pid) == ("failed", 6, 40 * MB, None)
    assert state_counts(group.rows) == "2 running, 1 failed"


def test_a_single_replica_is_shown_as_its_node():
    lines = build_lines([row("", "supervisor", pid=1), row("web#0", pid=2)])
    assert names(lines) == ["demo", "└─ web#0"] and not lines[1].group


def test_a_thousand_node_tree_is_twenty_lines_until_a_group_is_expanded():
    rows = [row("", "supervisor", pid=1)]
    for group in range(10):
        rows.append(row(f"g{group}", "supervisor", pid=10 + group))
        rows += [row(f"g{group}/w#{index}", pid=1000 + 100 * group + index) for index in range(100)]
    assert len(build_lines(rows)) == 21
    lines = build_lines(rows, expanded={"g3/w#"})
    assert len(lines) == 121
    assert names(lines)[8:10] == ["│  └─ w#0..#99", "│     ├─ w#0"]


def test_the_cursor_follows_its_line_and_keeps_it_in_the_window():
    cursor = Cursor()
    lines = build_lines(ROWS)
    cursor.move(5, lines, height=3)
    assert (cursor.index, cursor.top, cursor.key) == (5, 3, "pipeline/api")
    cursor.place(build_lines(ROWS[:3] + ROWS[4:]), height=3)  # a line above it went away
    assert (cursor.index, cursor.key) == (4, "pipeline/api")
    cursor.place(build_lines(ROWS, folded={"pipeline"}), height=3)  # hidden: the position stays, clamped
    assert (cursor.index, cursor.key) == (4, "odd")
    cursor.jump(-1, lines, 3)
    assert (cursor.index, cursor.top) == (len(lines) - 1, len(lines) - 3)
    cursor.move(-100, lines, 3)
    assert (cursor.index, cursor.top) == (0, 0)


def test_layout_gives_the_tree_what_the_footer_leaves():
    assert layout(40) == (30, 5)
    assert layout(12) == (8, 0)
    assert layout(3) == (1, 0)


def test_restarts_in_the_last_minute_count_counter_increases_and_the_seed():
    window = RestartWindow(span=60.0)
    window.seed([1000.0, 1030.0])
    window.observe([row("a", restarts=2)], now=1040.0)  # the first look only sets the baseline
    window.observe([row("a", restarts=5), row("b", restarts=1)], now=1050.0)
    assert window.count(1050.0) == 5
    assert window.count(1075.0) == 4  # the seed's first restart is over a minute old
    window.observe([row("a", restarts=0)], now=1080.0)  # a reload that renumbered: never negative
    assert window.count(1200.0) == 0


def test_keys_from_terminal_bytes():
    assert decode(b"jk\x1b[A\x1b[B\x1b[5~\x1b[6~\r") == ["j", "k", "up", "down", "pgup", "pgdn", "enter"]
    assert decode(b"\x1b") == ["esc"]
    assert decode(b"\x1bq") == ["esc", "q"]
    assert decode(b"\x1bOH\x1b[F\x1b[1;5A") == ["home", "end"]  # an unknown sequence is dropped whole
    assert decode(b"\x1b[") == []


def test_rich_is_imported_only_by_orch_top():
    """`orch up` becomes the root and forks every worker: whatever it imports sits in each of them."""
    code = ("import sys\n"
            "from orchestrator.cli.main import main\n"
            "assert main(['validate', 'trees/demo.toml']) == 0\n"
            "import orchestrator.root.root, orchestrator.cli.top\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'rich'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
