"""Process titles: `ps` shows which node a process is, and leftovers of a tree can be found by it."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import psutil

_set_title: Optional[Callable[[str], None]]
try:  # setproctitle rewrites argv so `ps` shows the title; without it, titles are skipped
    from setproctitle import setproctitle as _set_title
except ImportError:  # pragma: no cover - setproctitle is a dependency; this is graceful decline
    _set_title = None

PREFIX = "orch: "


def node_title(tree: str, path: str) -> str:
    return f"{PREFIX}{tree}/{path}" if path else f"{PREFIX}{tree} (root)"


def set_node_title(tree: str, path: str) -> None:
    if _set_title is not None:
        _set_title(node_title(tree, path))


def set_guardian_title(tree: str) -> None:
    """Title the process above the root (orchestrator/guardian.py). It is not a node and
    never outlives its root, so `claimants` leaves it out: it is never a leftover."""
    if _set_title is not None:
        _set_title(f"{PREFIX}{tree} (guardian)")


def claimants(tree: str) -> Iterator[psutil.Process]:
    """Processes whose title says they belong to `tree`."""
    node_prefix = f"{PREFIX}{tree}/"
    root_title = node_title(tree, "")
    for proc in psutil.process_iter(["cmdline"], ad_value=None):
        # psutil splits a rewritten argv on spaces, so compare the joined line.
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith(node_prefix) or title == root_title:
            yield proc
