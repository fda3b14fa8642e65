"""Workers for tests/process/test_tree_metrics.py, loaded as a .py plugin."""
import os
import signal

from orchestrator import hookimpl


def hold(size):
    """Keep `size` touched bytes resident, then sleep."""
    hog = bytearray(b"x" * size)  # noqa: F841 (kept resident)
    while True:
        signal.pause()


def helper_hold(size):
    """Fork a helper (same process group) that keeps `size` touched bytes; both then sleep."""
    if os.fork() == 0:
        hog = bytearray(b"x" * size)  # noqa: F841 (kept resident)
    while True:
        signal.pause()


def spin():
    """Burn one core."""
    while True:
        pass


@hookimpl
def orch_workers():
    return {"m.hold": hold, "m.helper_hold": helper_hold, "m.spin": spin}
