"""Workers for the spawn boot tests (tests/process/test_spawn_boot.py), loaded as a .py plugin."""
import signal
import sys

from orchestrator import hookimpl

# What a spawned worker should not have imported to reach its own code (engine/child.py).
HEAVY = ("pluggy", "attrs", "psutil", "orchestrator.spec.model", "orchestrator.spec.catalog")


def heavy():
    """Print which of HEAVY this process has imported ("none"), then sleep until signalled."""
    print("heavy:", ",".join(name for name in HEAVY if name in sys.modules) or "none", flush=True)
    while True:
        signal.pause()


def _closure():
    def inner():
        """A worker only the catalog can find: no module-level name leads to it."""
        print("closure runs", flush=True)
        while True:
            signal.pause()

    return inner


@hookimpl
def orch_workers():
    return {"spawn.heavy": heavy, "spawn.closure": _closure()}
