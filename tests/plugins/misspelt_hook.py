"""Test plugin with a misspelt hook (`orch_worker`): it must be reported, not ignored."""
import signal

from orchestrator import hookimpl


def sleeper():
    """Sleep until signalled."""
    while True:
        signal.pause()


@hookimpl
def orch_worker():
    return {"misspelt.sleep": sleeper}
