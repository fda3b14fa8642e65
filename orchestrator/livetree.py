"""The OS's view of a running tree: a psutil snapshot of the root and its descendants."""
from __future__ import annotations

from typing import Dict, Optional

import attrs
import psutil

_ATTRS = ["pid", "ppid", "status", "create_time", "name"]


@attrs.frozen
class LiveProcess:
    pid: int
    ppid: Optional[int]
    status: Optional[str]
    create_time: Optional[float]
    name: Optional[str]


def snapshot(root_pid: int) -> Dict[int, LiveProcess]:
    """Every live process at or below `root_pid`, read in one pass over /proc."""
    by_pid: Dict[int, LiveProcess] = {}
    for proc in psutil.process_iter(_ATTRS, ad_value=None):
        info = proc.info
        by_pid[info["pid"]] = LiveProcess(**{key: info[key] for key in _ATTRS})
    children: Dict[int, list] = {}
    for live in by_pid.values():
        children.setdefault(live.ppid, []).append(live.pid)
    found: Dict[int, LiveProcess] = {}
    stack = [root_pid] if root_pid in by_pid else []
    while stack:
        pid = stack.pop()
        found[pid] = by_pid[pid]
        stack.extend(children.get(pid, ()))
    return found
