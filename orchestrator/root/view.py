"""Rows for `orch tree`: the spec joined with the root's table and the OS's truth; text and JSON."""
from __future__ import annotations

import time
from typing import AbstractSet, Callable, Dict, List, Mapping, Optional, Tuple

from orchestrator.engine.osproc import cmdline as read_cmdline
from orchestrator.engine.states import NodeState
from orchestrator.root.livetree import LiveProcess
from orchestrator.root.table import NOT_STARTED, NodeRecord
from orchestrator.spec.model import TreeSpec


def build_rows(tree: TreeSpec, table: Mapping[str, NodeRecord], live: Mapping[int, LiveProcess],
               root_pid: int, root_state: NodeState, root_started: float,
               being_repaired: AbstractSet[int] = frozenset(), root_ready: bool = True,
               cpu: Optional[Mapping[int, Optional[float]]] = None) -> List[dict]:
    """One row per spec node in depth-first spec order, then processes no node claims.

    pid/ppid come from the OS snapshot: a pid the root believes in but the OS does
    not have is shown as missing, never as running. `rss` of a node is its process
    group's (each node leads its own); `cpu` is percent of one core per pid
    (`livetree.CpuMeter`), None when not sampled.
    """
    cpu = cpu or {}
    now = time.time()
    rows = []
    pids: List[Optional[int]] = []
    for node in tree.nodes():
        entry = table.get(node.path, NOT_STARTED) if node.path else NodeRecord(
            pid=root_pid, state=root_state, started_at=root_started)
        pid = entry.pid
        remote = entry.backend == "ray"  # its pid is on its Ray node, not below the root: not looked up
        proc = live.get(pid) if pid and not remote else None
        state = entry.state
        if pid and proc is None and not remote:
            state, pid = NodeState.MISSING, None
        started = entry.started_at
        pids.append(pid)
        rows.append({
            "path": node.path, "name": node.name if node.path else tree.name, "kind": node.kind,
            "parent": _parent(node.path), "pid": pid, "ppid": proc.ppid if proc else None,
            "state": state, "restarts": entry.restarts,
            "failures": entry.failures, "daemon": node.daemon,
            "held": node.held,
            "uptime": round(now - started, 3) if (pid and started) else None,
            # READY=1 seen (`ready = "notify"`), a worker running, a subtree up; sd_notify STATUS=.
            "ready": bool(pid) and (entry.ready if node.path else root_ready),
            "status": entry.status if pid else None,
            "backend": entry.backend or "local",
            # A Ray worker's place: host and Ray node id of its actor (its pid is that host's).
            "host": entry.host if remote and pid else None,
            "node_id": entry.node_id if remote and pid else None,
            "actor_id": entry.actor_id if remote and pid else None,
        })
    _mark_drift(rows)
    group_rss = _group_rss(live)
    for row, pid in zip(rows, pids):
        proc = live.get(pid) if pid and row["backend"] != "ray" else None
        row["rss"] = None if proc is None or proc.rss is None else proc.rss + group_rss.get(proc.pid, 0)
        row["cpu"] = cpu.get(pid) if pid else None
    return rows + _helpers(rows, live, now, being_repaired, cpu)


def _group_rss(live: Mapping[int, LiveProcess]) -> Dict[int, int]:
    """pgid -> rss summed over the group's members other than its leader."""
    totals: Dict[int, int] = {}
    for proc in live.values():
        if proc.pgid is not None and proc.pgid != proc.pid and proc.rss is not None:
            totals[proc.pgid] = totals.get(proc.pgid, 0) + proc.rss
    return totals


def _mark_drift(rows: List[dict]) -> None:
    """A node drifts when the OS disagrees with the spec: wrong parent, or gone unnoticed."""
    pid_of = {row["path"]: row["pid"] for row in rows}
    for row in rows:
        parent_pid = pid_of.get(row["parent"]) if row["parent"] is not None else None
        # A Ray worker's OS parent is Ray's worker machinery on its node, never its supervisor.
        local = row.get("backend") != "ray"
        wrong_parent = local and row["pid"] is not None and parent_pid is not None and row["ppid"] != parent_pid
        row["drift"] = wrong_parent or row["state"] == NodeState.MISSING


def _parent(path: str) -> Optional[str]:
    if not path:
        return None
    return path.rpartition("/")[0]


def _helpers(rows: List[dict], live: Mapping[int, LiveProcess], now: float,
             being_repaired: AbstractSet[int], cpu: Mapping[int, Optional[float]]) -> List[dict]:
    """Descendants that are not nodes: multiprocessing helpers, processes a worker forked,
    and orphans the root adopted and is stopping (marked as drift)."""
    path_of: Dict[int, str] = {row["pid"]: row["path"] for row in rows if row["pid"]}
    helpers = []
    for proc in sorted(live.values(), key=lambda p: p.pid):
        if proc.pid in path_of:
            continue
        parent = path_of.get(proc.ppid) if proc.ppid is not None else None
        path = f"{parent}/~{proc.pid}" if parent else f"~{proc.pid}"
        path_of[proc.pid] = path
        orphan = proc.pid in being_repaired
        helpers.append({
            "path": path, "name": _helper_name(proc), "kind": "orphan" if orphan else "helper",
            "parent": parent, "pid": proc.pid, "ppid": proc.ppid,
            # An orphan is being stopped; a helper shows the OS's status word (`sleeping`...),
            # which is not a NodeState.
            "state": NodeState.STOPPING if orphan else (proc.status or "?"), "restarts": 0, "failures": 0,
            "daemon": False, "uptime": round(now - proc.create_time, 3) if proc.create_time else None,
            "drift": orphan, "ready": False, "status": None,
            "rss": proc.rss, "cpu": cpu.get(proc.pid),
        })
    return helpers


def _helper_name(proc: LiveProcess) -> str:
    """Name multiprocessing's own helpers after their job rather than `python3`."""
    cmdline = read_cmdline(proc.pid)
    if "resource_tracker" in cmdline:
        return "resource_tracker"
    name = proc.name or "?"
    if len(name) >= 15:  # the kernel's name is cut at 15 bytes: the full one, as psutil's name() gives it
        first = cmdline.split(" ", 1)[0].rpartition("/")[2]
        return first if first.startswith(name) else cmdline if cmdline.startswith(name) else name
    return name


def render_text(tree_name: str, rows: List[dict], style: Optional[Callable[[str, str], str]] = None) -> str:
    """A pstree-like view with aligned columns.

    `style(text, role)` may decorate a cell (the CLI colors it on a terminal); widths are
    taken from the plain text, so decorations never shift a column. Roles: `header`, a
    node's state (`running`, `backoff`, ...; `held` for a held node's `stopped`, `helper`
    for a helper's OS status word), and the KIND flags `held` and `drift` (a drifting
    node's name too).
    """
    paint = style or _unstyled
    children: Dict[Optional[str], List[dict]] = {}
    for row in rows:
        children.setdefault(row["parent"], []).append(row)
    labels: List[Tuple[str, str, dict]] = []

    def walk(row: dict, prefix: str, tail: str) -> None:
        labels.append((prefix, row["name"], row))
        kids = children.get(row["path"], [])
        for index, kid in enumerate(kids):
            last = index == len(kids) - 1
            walk(kid, tail + ("└─ " if last else "├─ "), tail + ("   " if last else "│  "))

    for root in children.get(None, []):
        walk(root, "", "")
    width = max(len(prefix + name) for prefix, name, _ in labels)
    header = f"{'NODE':<{width}}  {'PID':>7}  {'PPID':>7}  {'STATE':<10}  {'RESTARTS':>8}  {'UPTIME':>8}  {'RSS':>7}  {'CPU%':>6}  KIND"
    return "\n".join([paint(header, "header")] + [_line(prefix, name, row, width, paint)
                                                   for prefix, name, row in labels])


def _line(prefix: str, name: str, row: dict, width: int, paint: Callable[[str, str], str]) -> str:
    """One row of the text view; pads are counted on the plain text, outside `paint`."""
    flags = [flag for flag in ("daemon", "held", "drift") if row.get(flag)]
    place = [_ray_place(row)] if row.get("backend") == "ray" else []
    kind = ", ".join([row["kind"]] + place
                     + [paint(flag.upper() if flag == "drift" else flag, flag) for flag in flags])
    state = str(row["state"])
    return (prefix + paint(name, "drift" if row.get("drift") else "") + " " * (width - len(prefix + name))
            + f"  {_num(row['pid']):>7}  {_num(row['ppid']):>7}  "
            + paint(state, _state_role(row)) + " " * (10 - len(state))
            + f"  {row['restarts']:>8}  {duration(row['uptime']):>8}  "
            + f"{size(row.get('rss')):>7}  {percent(row.get('cpu')):>6}  {kind}"
            + (f"  ({row['status']})" if row.get("status") else ""))


def _ray_place(row: dict) -> str:
    """`ray host/1a2b3c4d`: where a Ray worker runs (its PID is that host's); `ray` while it runs nowhere."""
    if not row.get("host"):
        return "ray"
    return f"ray {row['host']}/{(row.get('node_id') or '')[:8]}"


def _unstyled(text: str, role: str) -> str:
    return text


def _state_role(row: dict) -> str:
    """The role of a row's state cell: the state; `held` for a node stopped by `orch stop`;
    `helper` for a helper's OS status word."""
    if row["kind"] == "helper":
        return "helper"
    return "held" if row.get("held") and row["state"] == "stopped" else str(row["state"])


def _num(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def size(value: Optional[float]) -> str:
    """12.3M: binary units, one decimal (also `orch top`'s)."""
    if value is None:
        return "-"
    if value < 1024:
        return f"{int(value)}B"
    amount = float(value)
    unit = "K"
    for unit in "KMGT":
        amount /= 1024
        if amount < 1024:
            break
    return f"{amount:.1f}{unit}"


def percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def duration(seconds: Optional[float]) -> str:
    """42s, 3m05s, 2h07m, 3d04h."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
