"""Test plugin: provides `dup.same`, as dup_b.py does (a duplicate worker name must name both)."""
import signal

from orchestrator import hookimpl


def same():
    """Sleep until signalled (version A)."""
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {"dup.same": same, "dup.only_a": same}
