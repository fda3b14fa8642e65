"""`orch top`'s model: tree rows into display lines (replicas collapsed), the cursor, totals. No I/O.

Rows are what the root's `tree` request returns (orchestrator/root/view.py `build_rows`),
as parsed JSON: states are plain strings here.
"""
from __future__ import annotations

import collections
import re
import time
from typing import AbstractSet, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import attrs

from orchestrator.cli import logread
from orchestrator.events import Event

REPLICA = re.compile(r"(?P<base>.+)#(?P<index>\d+)")
# What a collapsed group or a folded subtree shows as its state: the worst one below it.
SEVERITY = ("failed", "missing", "drift", "backoff", "restarting", "stopping", "starting", "pending",
            "held", "stopped", "running")
RESTART_WINDOW = 60.0  # seconds the footer's restart count looks back


@attrs.frozen
class Line:
    """One line of the tree view: a node, or a replica group (`web#0..#99`) when `group`.

    `key` is unique and stable across refreshes (the node path, or `<parent>/<base>#`
    for a group), so the cursor stays on its line while the tree changes. `rows` is the
    node's row, or the group's members; `below` counts the nodes a folded line hides.
    """

    key: str
    prefix: str
    name: str
    rows: Tuple[dict, ...]
    group: bool = False
    foldable: bool = False
    folded: bool = False
    below: int = 0

    @property
    def row(self) -> Optional[dict]:
        """The node's row; None for a group (its members are in `rows`)."""
        return None if self.group else self.rows[0]

    @property
    def path(self) -> Optional[str]:
        return None if self.group else self.rows[0]["path"]


Item = Union[dict, Tuple[str, str, List[dict]]]  # a row, or (group key, base name, member rows)


def build_lines(rows: Sequence[dict], expanded: AbstractSet[str] = frozenset(),
                folded: AbstractSet[str] = frozenset()) -> List[Line]:
    """Depth-first lines with tree-drawing prefixes, as `orch tree` draws them; replicas of one
    worker collapse into one group line unless their key is in `expanded`; the children of a
    node whose path is in `folded` are left out."""
    children: Dict[Optional[str], List[dict]] = {}
    for row in rows:
        children.setdefault(row["parent"], []).append(row)
    lines: List[Line] = []

    def walk(items: List[Item], tail: str, top: bool) -> None:
        for index, item in enumerate(items):
            last = index == len(items) - 1
            branch = "" if top else tail + ("└─ " if last else "├─ ")
            inner = "" if top else tail + ("   " if last else "│  ")
            if isinstance(item, dict):
                node(item, branch, inner)
            else:
                group(item, branch, inner)

    def node(row: dict, branch: str, inner: str) -> None:
        kids = children.get(row["path"], [])
        closed = bool(kids) and row["path"] in folded
        lines.append(Line(row["path"], branch, row["name"], (row,), foldable=bool(kids), folded=closed,
                          below=_count_below(row["path"], children) if closed else 0))
        if kids and not closed:
            walk(_items(kids), inner, False)

    def group(item: Tuple[str, str, List[dict]], branch: str, inner: str) -> None:
        key, base, members = item
        first, last = (REPLICA.fullmatch(members[end]["name"]) for end in (0, -1))
        label = f"{base}#{first['index'] if first else '?'}..#{last['index'] if last else '?'}"
        is_open = key in expanded
        lines.append(Line(key, branch, label, tuple(members), group=True, foldable=True, folded=not is_open,
                          below=len(members)))
        if is_open:
            walk(list(members), inner, False)

    walk(_items(children.get(None, [])), "", True)
    return lines


def _items(kids: List[dict]) -> List[Item]:
    """The children of one node in spec order, replicas of one worker gathered where the first one is."""
    items: List[Item] = []
    groups: Dict[str, List[dict]] = {}
    for row in kids:
        key = group_key(row)
        if key is None:
            items.append(row)
            continue
        if key not in groups:
            groups[key] = []
            items.append((key, key.rpartition("/")[2][:-1], groups[key]))
        groups[key].append(row)
    # a lone `web#0` (replicas = 1) is shown as the node it is
    return [item[2][0] if isinstance(item, tuple) and len(item[2]) == 1 else item for item in items]


def group_key(row: dict) -> Optional[str]:
    """The key of the replica group a worker's row belongs to, `<parent>/<base>#`; None for other rows."""
    match = REPLICA.fullmatch(row["name"]) if row.get("kind") == "worker" else None
    return f"{row['parent'] or ''}/{match['base']}#" if match else None


def _count_below(path: str, children: Dict[Optional[str], List[dict]]) -> int:
    kids = children.get(path, [])
    return len(kids) + sum(_count_below(kid["path"], children) for kid in kids)


# ----- what a line shows ------------------------------------------------------------------


def state_label(row: dict) -> str:
    """The state word: `held` for a node `orch stop` keeps stopped, `drift` while the OS
    disagrees with the spec (a wrong parent), else the row's state."""
    state = str(row["state"])
    if row.get("held"):
        return "held"
    if row.get("drift") and state != "missing":
        return "drift"
    return state


def worst_state(rows: Iterable[dict]) -> str:
    labels = [state_label(row) for row in rows]
    known = [label for label in labels if label in SEVERITY]
    if not known:
        return labels[0] if labels else "-"
    return min(known, key=SEVERITY.index)


def state_counts(rows: Iterable[dict]) -> str:
    """`98 running, 2 backoff`: the members' states, most common first."""
    counts = collections.Counter(state_label(row) for row in rows)
    return ", ".join(f"{count} {state}" for state, count in counts.most_common())


@attrs.frozen
class Figures:
    """The numbers of one line: a node's own, or summed over a group's members."""

    state: str
    pid: Optional[int]
    ready: Optional[bool]
    restarts: int
    uptime: Optional[float]
    cpu: Optional[float]
    rss: Optional[float]


def figures(line: Line) -> Figures:
    row = line.row
    if row is not None:
        has_ready = row.get("pid") and row.get("kind") in ("worker", "supervisor")
        return Figures(state_label(row), row.get("pid"), row.get("ready") if has_ready else None,
                       row.get("restarts") or 0, row.get("uptime"), row.get("cpu"), row.get("rss"))
    members = list(line.rows)
    uptimes = [row["uptime"] for row in members if row.get("uptime") is not None]
    return Figures(state=worst_state(members), pid=None, ready=None,
                   restarts=sum(row.get("restarts") or 0 for row in members),
                   uptime=min(uptimes) if uptimes else None,
                   cpu=_sum(row.get("cpu") for row in members), rss=_sum(row.get("rss") for row in members))


def _sum(values: Iterable[Optional[float]]) -> Optional[float]:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


# ----- the cursor ---------------------------------------------------------------------------


class Cursor:
    """The selected line and the first line shown; the selection follows its key across refreshes."""

    def __init__(self) -> None:
        self.key: Optional[str] = None
        self.index = 0
        self.top = 0

    def place(self, lines: Sequence[Line], height: int) -> None:
        """After the lines changed: find the selected key again (or keep the position)."""
        keys = [line.key for line in lines]
        if self.key in keys:
            self.index = keys.index(self.key)
        self._settle(lines, height)

    def move(self, delta: int, lines: Sequence[Line], height: int) -> None:
        self.index += delta
        self._settle(lines, height)

    def jump(self, index: int, lines: Sequence[Line], height: int) -> None:
        self.index = index if index >= 0 else len(lines) + index
        self._settle(lines, height)

    def _settle(self, lines: Sequence[Line], height: int) -> None:
        height = max(1, height)
        self.index = max(0, min(self.index, len(lines) - 1))
        if self.index < self.top:
            self.top = self.index
        elif self.index >= self.top + height:
            self.top = self.index - height + 1
        self.top = max(0, min(self.top, max(0, len(lines) - height)))
        self.key = lines[self.index].key if lines else None


# ----- the footer ---------------------------------------------------------------------------


@attrs.frozen
class Totals:
    processes: int  # every live process of the tree, helpers included
    nodes: int  # spec nodes
    running: int  # spec nodes running
    memory: int  # bytes: the process groups of the spec nodes (a helper counts in its node's group)
    cpu: float  # percent of one core, summed


def totals(rows: Sequence[dict]) -> Totals:
    nodes = [row for row in rows if row.get("kind") in ("supervisor", "worker")]
    return Totals(processes=sum(1 for row in rows if row.get("pid")), nodes=len(nodes),
                  running=sum(1 for row in nodes if row["state"] == "running"),
                  memory=sum(row.get("rss") or 0 for row in nodes),
                  cpu=sum(row.get("cpu") or 0.0 for row in rows))


class RestartWindow:
    """Restarts in the last minute: increases of each node's restart counter seen between
    refreshes, plus the restarts events.jsonl recorded before the first refresh."""

    def __init__(self, span: float = RESTART_WINDOW) -> None:
        self.span = span
        self.counters: Optional[Dict[str, int]] = None
        self.times: Deque[Tuple[float, int]] = collections.deque()

    def seed(self, times: Iterable[float]) -> None:
        for ts in sorted(times):
            self.times.append((ts, 1))

    def observe(self, rows: Sequence[dict], now: float) -> None:
        counters = {row["path"]: row.get("restarts") or 0 for row in rows if row.get("kind") != "helper"}
        if self.counters is not None:
            grown = sum(max(0, count - self.counters.get(path, count)) for path, count in counters.items())
            if grown:
                self.times.append((now, grown))
        self.counters = counters

    def count(self, now: float) -> int:
        while self.times and self.times[0][0] < now - self.span:
            self.times.popleft()
        return sum(count for _, count in self.times)


def is_restart_start(event: Event) -> bool:
    """A node's process started again after a restart (the first start has restarts 0)."""
    return event.event == "started" and bool(event.path) and bool(event.restarts)


def event_texts(events: Sequence[Event], root: str) -> List[str]:
    """`12:04:01  pipeline/transform  exited      exit_code=1`, paths and kinds aligned: local
    time, null fields left out, the root named `root`."""
    path_width = max((len(event.path or root) for event in events), default=0)
    kind_width = max((len(event.event) for event in events), default=0)
    return [_event_text(event, root, path_width, kind_width) for event in events]


def _event_text(event: Event, root: str, path_width: int, kind_width: int) -> str:
    fields = logread.event_fields(event)
    clock = time.strftime("%H:%M:%S", time.localtime(event.ts))
    columns = [clock, (event.path or root).ljust(path_width), event.event.ljust(kind_width), fields,
               event.reason or ""]
    return "  ".join(column for column in columns if column).rstrip()

