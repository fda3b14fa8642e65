"""ANSI colors for the CLI: when to color, a stable color per node path, and the colors of node states.

Standard library only and nothing at import time but constants: `orch logs` imports it
at module level, so it sits on the path of `orch up` (which forks every worker).
Colors go to a terminal only: never with `--no-color`, a non-empty $NO_COLOR
(https://no-color.org) or output that is not a TTY.
"""
from __future__ import annotations

import os
import re
import sys
import zlib
from typing import Mapping, Optional, TextIO

RESET = "\x1b[0m"
# ANSI foreground colors a node path may get (`orch logs`): readable on dark and light terminals.
_COLORS = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)
_ANSI = r"\x1b\[[0-9;]*m"  # compiled on first use (re caches it): not at import

# `orch tree`: SGR parameters per role the view names (orchestrator.root.view.render_text).
# Healthy green, on its way yellow, waiting to retry bold yellow, given up red, at rest dim,
# held by `orch stop` blue, disagreeing with the OS magenta. Unnamed roles stay plain.
TREE_STYLES: Mapping[str, str] = {
    "header": "1",  # bold
    "running": "32",  # green
    "pending": "33", "starting": "33", "restarting": "33", "stopping": "33",  # yellow
    "backoff": "1;33",  # bold yellow: the closest to orange every terminal has
    "failed": "1;31",  # bold red
    "missing": "31",  # red: a pid the OS does not have
    "stopped": "2",  # dim
    "helper": "2",  # dim: a helper's OS status word (`sleeping`), not a node state
    "held": "34",  # blue
    "drift": "35",  # magenta
}


def use_color(disabled: bool, out: Optional[TextIO] = None) -> bool:
    """Color only on a terminal, and never with --no-color or a non-empty $NO_COLOR."""
    out = out or sys.stdout
    return not disabled and not os.environ.get("NO_COLOR") and out.isatty()


def color_of(label: str) -> int:
    """The ANSI color of a node path: the same in every run."""
    return _COLORS[zlib.crc32(label.encode()) % len(_COLORS)]


def paint(text: str, sgr: Optional[str]) -> str:
    """`text` wrapped in the SGR sequence `sgr` and a reset; as is for None or empty text."""
    return f"\x1b[{sgr}m{text}{RESET}" if sgr and text else text


def tree_style(text: str, role: str) -> str:
    """The `style` callback of `view.render_text` for a terminal."""
    return paint(text, TREE_STYLES.get(role))


def plain(text: str) -> str:
    """`text` without its ANSI color sequences."""
    return re.sub(_ANSI, "", text)
