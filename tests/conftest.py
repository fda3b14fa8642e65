"""Test configuration: the orch pytest helpers, and no stray installed plugins."""
import ctypes
import os
import signal

import psutil
import pytest

os.environ["ORCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"

pytest_plugins = ["orchestrator.testing"]

PR_SET_CHILD_SUBREAPER = 36


def _prctl_subreaper(on: bool) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


@pytest.fixture
def subreaper():
    """Make this test process a child subreaper while the tree runs.

    Whatever the root leaves behind when it exits (live or zombie) is then
    reparented to us instead of to pid 1, where it could not be seen.
    Request it before `orch_tree` so it is torn down after the tree is killed.
    """
    if not _prctl_subreaper(True):
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is not available")
    try:
        yield
    finally:
        _prctl_subreaper(False)
        for proc in psutil.Process().children():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and "orch" not in " ".join(proc.cmdline()):
                    continue  # not adopted from a tree: leave it to its owner
                if proc.status() != psutil.STATUS_ZOMBIE:
                    proc.send_signal(signal.SIGKILL)
                os.waitpid(proc.pid, 0)
            except (psutil.Error, ChildProcessError):
                continue
