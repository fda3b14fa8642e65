"""Test configuration: the orch pytest helpers, and no stray installed plugins."""
import os
import signal

import psutil
import pytest

from orchestrator.engine import osproc

os.environ["ORCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"

pytest_plugins = ["orchestrator.testing"]


@pytest.fixture
def subreaper():
    """Make this test process a child subreaper while the tree runs.

    Whatever the root leaves behind when it exits (live or zombie) is then
    reparented to us instead of to pid 1, where it could not be seen.
    Request it before `orch_tree` so it is torn down after the tree is killed.
    """
    if not osproc.become_subreaper():
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is not available")
    try:
        yield
    finally:
        osproc.become_subreaper(False)
        for proc in psutil.Process().children():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and "orch" not in " ".join(proc.cmdline()):
                    continue  # not adopted from a tree: leave it to its owner
                if proc.status() != psutil.STATUS_ZOMBIE:
                    proc.send_signal(signal.SIGKILL)
                os.waitpid(proc.pid, 0)
            except (psutil.Error, ChildProcessError):
                continue
