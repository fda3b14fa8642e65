"""`orch top`'s screens as rich renderables: the tree with its footer, a node's log. No I/O.

Every line is a `Text` cut to the width (never wrapped), so what the screen holds is
exactly what `layout` counted; the same code renders into a recording Console in the
snapshot tests.
"""
from __future__ import annotations

import time
from typing import List, Mapping, Optional, Sequence, Tuple

import attrs
from rich.console import Group
from rich.text import Text

from orchestrator.cli.logread import Record
from orchestrator.cli.top_model import Line, Totals, figures, state_counts
from orchestrator.root.view import duration, percent, size

STATE_STYLES = {
    "running": "green", "starting": "cyan", "pending": "dim", "backoff": "yellow", "restarting": "yellow",
    "stopping": "yellow", "stopped": "dim", "failed": "bold red", "missing": "bold red",
    "held": "magenta", "drift": "bold magenta",
}
# (header, width, right aligned) of the columns after NODE; the last column takes the rest.
Column = Tuple[str, int, bool]
COLUMNS: Tuple[Column, ...] = (
    ("STATE", 10, False), ("RDY", 3, False), ("PID", 7, True), ("RST", 5, True),
    ("UPTIME", 7, True), ("CPU%", 6, True), ("RSS", 7, True))
DROPPED_FIRST = ("RDY", "CPU%", "UPTIME", "RSS", "RST")  # on a narrow screen, after the log column
GAP = "  "
MIN_NODE, MIN_LAST, WANTED_NODE = 12, 20, 20
HELP = "↑↓/jk move  PgUp/PgDn  Enter expand/fold  r restart  s stop/start  l log  q quit"
LOG_HELP = "Esc/q back  ↑↓/PgUp/PgDn scroll  End follow"


@attrs.frozen
class TreeScreen:
    """Everything the tree screen shows, gathered by the loop (top_app.py)."""

    tree: str
    file: str
    lines: Sequence[Line]
    selected: int
    top: int
    last_lines: Mapping[str, str]  # node path -> the last line of its log (visible nodes only)
    totals: Totals
    restarts: int  # in the last minute
    events: Sequence[str]  # latest last
    message: str = ""  # the answer to the last command, or a question (prompt)
    prompt: bool = False
    clock: str = ""


def layout(height: int) -> Tuple[int, int]:
    """(rows of tree lines, rows of events) on a screen `height` rows high."""
    events = max(0, min(5, (height - 12) // 3))
    fixed = 4 + (events + 1 if events else 0)  # title, header, totals, help; the events' rule
    return max(1, height - fixed), events


def render_tree(screen: TreeScreen, width: int, height: int) -> Group:
    body, event_rows = layout(height)
    shown = list(screen.lines[screen.top:screen.top + body])
    longest = max((len(_label(line)) for line in shown), default=4)
    columns = _columns(width, longest)
    node_width = _node_width(longest, columns, width)
    texts = [_title(screen, width), _header(node_width, columns, width)]
    for offset, line in enumerate(shown):
        text = _line(line, node_width, columns, width, screen.last_lines)
        if screen.top + offset == screen.selected:
            text.pad_right(width - text.cell_len)
            text.stylize("reverse")
        texts.append(text)
    texts += [Text("") for _ in range(body - len(shown))]
    texts.append(_totals(screen, width))
    if event_rows:
        texts.append(_rule(" latest events ", width))
        events = list(screen.events[-event_rows:])
        texts += [_cut(Text(event, style="dim"), width) for event in events]
        texts += [Text("") for _ in range(event_rows - len(events))]
    texts.append(_status(screen.message, screen.prompt, width))
    return Group(*texts)


def _fixed(columns: Sequence[Column]) -> int:
    return sum(width + len(GAP) for _, width, _ in columns)


def _columns(width: int, longest: int) -> List[Column]:
    """The columns that fit next to a NODE column of a useful width, the least useful dropped first."""
    columns = list(COLUMNS)
    for name in DROPPED_FIRST:
        if _fixed(columns) + min(longest, WANTED_NODE) <= width:
            break
        columns = [column for column in columns if column[0] != name]
    return columns


def _node_width(longest: int, columns: Sequence[Column], width: int) -> int:
    """As wide as the longest label shown; on a narrow screen the last column gives way first."""
    fixed = _fixed(columns)
    room = max(MIN_NODE, width - fixed - MIN_LAST, min(longest, width - fixed))
    return max(4, min(longest, room))


def _label(line: Line) -> str:
    if line.group:
        return f"{line.prefix}{'▸' if line.folded else '▾'} {line.name} ({len(line.rows)})"
    if line.folded:
        return f"{line.prefix}▸ {line.name} (+{line.below})"
    return line.prefix + line.name


def _title(screen: TreeScreen, width: int) -> Text:
    text = Text.assemble(("orch top", "bold"), "  tree ", (screen.tree, "bold"), f"  ({screen.file})")
    if screen.clock:
        text.append(f"  {screen.clock}")
    return _cut(text, width)


def _header(node_width: int, columns: Sequence[Column], width: int) -> Text:
    cells = ["NODE".ljust(node_width)] + [head.rjust(w) if right else head.ljust(w) for head, w, right in columns]
    return _cut(Text(GAP.join(cells) + GAP + "STATUS / LAST LOG LINE", style="bold"), width)


def _line(line: Line, node_width: int, columns: Sequence[Column], width: int,
          last_lines: Mapping[str, str]) -> Text:
    numbers = figures(line)
    row = line.row
    kind = row.get("kind") if row else "group"
    name_style = "bold" if kind == "supervisor" else "dim" if kind in ("helper", "orphan") else ""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append_text(_fit(Text(_label(line), style=name_style), node_width))
    ready = "" if numbers.ready is None else "yes" if numbers.ready else "no"
    cells = {"STATE": (numbers.state, STATE_STYLES.get(numbers.state, "dim")),
             "RDY": (ready, "yellow" if ready == "no" else ""), "PID": (number(numbers.pid), ""),
             "RST": (str(numbers.restarts), ""), "UPTIME": (duration(numbers.uptime), ""),
             "CPU%": (percent(numbers.cpu), ""), "RSS": (size(numbers.rss), "")}
    for head, column_width, right in columns:
        cell, style = cells[head]
        text.append(GAP)
        text.append((cell.rjust(column_width) if right else cell.ljust(column_width))[:column_width], style=style)
    rest = width - text.cell_len - len(GAP)
    last = _last_column(line, kind, last_lines)
    if rest > 0 and last:
        text.append(GAP)
        text.append_text(_cut(last, rest))
    return text


def _last_column(line: Line, kind: Optional[str], last_lines: Mapping[str, str]) -> Text:
    if line.group:
        return Text(state_counts(line.rows), style="dim")
    row = line.rows[0]
    text = Text()
    if row.get("status"):
        text.append(f"({row['status']})", style="italic")
    if kind in ("helper", "orphan"):
        text.append(kind, style="dim")
    last = last_lines.get(row["path"])
    if last:
        text.append((" " if text else "") + last)
    return text


def _totals(screen: TreeScreen, width: int) -> Text:
    numbers = screen.totals
    text = Text.assemble(
        (str(numbers.processes), "bold"), " processes  ",
        (f"{numbers.running}/{numbers.nodes}", "bold"), " nodes running  ",
        (str(screen.restarts), "bold yellow" if screen.restarts else "bold"),
        f" restart{'' if screen.restarts == 1 else 's'} in the last minute  ",
        "rss ", (size(numbers.memory), "bold"), "  cpu ", (f"{numbers.cpu:.1f}%", "bold"))
    return _cut(text, width)


def _status(message: str, prompt: bool, width: int) -> Text:
    if prompt:
        return _cut(Text(message, style="bold reverse"), width)
    if message:
        return _cut(Text(message, style="bold"), width)
    return _cut(Text(HELP, style="dim"), width)


def _rule(title: str, width: int) -> Text:
    return _cut(Text("──" + title + "─" * max(0, width - len(title) - 2), style="dim"), width)


def _fit(text: Text, width: int) -> Text:
    """`text` cut with an ellipsis, or padded, to exactly `width` cells."""
    text.truncate(width, overflow="ellipsis", pad=True)
    return text


def _cut(text: Text, width: int) -> Text:
    text.no_wrap = True
    text.truncate(width, overflow="ellipsis")
    return text


# ----- the log screen -------------------------------------------------------------------------


@attrs.frozen
class LogScreen:
    path: str
    file: Optional[str]  # None when the tree writes no logs
    records: Sequence[Record]
    scroll: int  # lines back from the end; 0 follows


def render_log(screen: LogScreen, width: int, height: int) -> Group:
    rows = max(1, height - 2)
    where = f"({screen.file})" if screen.file else "(the tree writes no log files)"
    state = f"scrolled back {screen.scroll} lines" if screen.scroll else "following"
    title = Text.assemble(("log of ", "bold"), (screen.path, "bold"), f"  {where}  ", (state, "dim"))
    end = len(screen.records) - screen.scroll
    records = list(screen.records)[max(0, end - rows):max(0, end)]
    texts: List[Text] = [_cut(title, width)]
    if not records:
        texts.append(Text("nothing written yet", style="dim"))
    texts += [_cut(_log_line(record), width) for record in records]
    texts += [Text("") for _ in range(rows - max(1, len(records)))]
    texts.append(_cut(Text(LOG_HELP, style="dim"), width))
    return Group(*texts)


def _log_line(record: Record) -> Text:
    if record.ts is None:
        return Text(record.line)
    clock = time.strftime("%H:%M:%S", time.localtime(record.at))
    stream = {"stdout": "out", "stderr": "err"}.get(record.stream or "", record.stream or "")
    return Text.assemble((clock, "dim"), " ", (f"{stream:<3}", "red" if stream == "err" else "dim"),
                         " ", record.line)


# ----- numbers as text (as `orch tree` writes them) -------------------------------------------


def number(value: Optional[float]) -> str:
    return "-" if value is None else str(value)
