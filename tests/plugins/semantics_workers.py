"""Workers for the restart-semantics tests: each says when it is armed, so tests never race it."""
import os
import signal
import sys

from orchestrator import hookimpl


def _append(path, line):
    # One short O_APPEND write is atomic: concurrent workers never interleave lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Trigger(Exception):
    """What `trigger` raises for how = "raise"."""


def trigger(armed, how="exit", code=0):
    """On SIGUSR1 end the way `how` says; append our pid to `armed` once the handler is set.

    how: "exit" (sys.exit(code)), "raise" (an uncaught exception) or "system_exit"
    (raise SystemExit(code) directly).
    """
    def on_usr1(signum, frame):
        if how == "exit":
            sys.exit(code)
        if how == "raise":
            raise Trigger("raised by the test worker")
        if how == "system_exit":
            raise SystemExit(code)
        raise ValueError(f"unknown how={how!r}")

    signal.signal(signal.SIGUSR1, on_usr1)
    _append(armed, str(os.getpid()))
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {"s.trigger": trigger}
