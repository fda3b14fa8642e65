"""Workers for trees/demo.toml: they print what they do so the tree is visible."""
from __future__ import annotations

import os
import signal
import sys
import time

from orchestrator import hookimpl


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def ticker(interval: float = 1.0, message: str = "tick") -> None:
    """Print `message N` every `interval` seconds; on SIGTERM say goodbye and exit 0."""
    signal.signal(signal.SIGTERM, _raise_stop)
    count = 0
    try:
        while True:
            count += 1
            print(f"{message} {count} (pid {os.getpid()})", flush=True)
            time.sleep(interval)
    except _Stop:
        print(f"{message}: stopping after {count}", flush=True)


def flaky(lifetime: float = 3.0, code: int = 1) -> None:
    """Work for `lifetime` seconds, then crash with exit `code` to show a restart."""
    print(f"started (pid {os.getpid()}), will crash in {lifetime}s", flush=True)
    time.sleep(lifetime)
    print(f"crashing with exit code {code}", file=sys.stderr, flush=True)
    sys.exit(code)


def sleeper() -> None:
    """Announce itself, then sleep until told to stop."""
    print(f"ready (pid {os.getpid()}, parent {os.getppid()})", flush=True)
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {"demo.ticker": ticker, "demo.flaky": flaky, "demo.sleep": sleeper}
