"""General-purpose workers: sleep, exit with a code, exec an external command."""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Optional, Sequence

from orchestrator import hookimpl


def sleep(seconds: Optional[float] = None) -> None:
    """Sleep for `seconds`, or until signalled when not given."""
    if seconds is None:
        while True:
            signal.pause()
    time.sleep(seconds)


def exit_with(code: int = 0, after: float = 0.0, message: str = "") -> None:
    """Wait `after` seconds, print `message` if any, then exit with `code`."""
    time.sleep(after)
    if message:
        print(message, flush=True)
    sys.exit(code)


def run_command(argv: Sequence[str]) -> None:
    """Replace the worker process with an external command; the pid stays supervised."""
    if not argv:
        raise ValueError("orch.exec needs a non-empty argv list")
    sys.stdout.flush()
    sys.stderr.flush()
    # Its output goes to a pipe: a Python program would hold its prints in a block
    # buffer. A value the node's env set (applied before us) is kept, "" included.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.execvp(argv[0], list(argv))


@hookimpl
def orch_workers():
    return {"orch.sleep": sleep, "orch.exit": exit_with, "orch.exec": run_command}
