"""Replicas run as name#0..N-1 and stop together, as OTP's simple_one_for_one children do."""
import os
import signal
import time

import psutil
import pytest

from orchestrator.testing import gone, wait_for
from tests.helpers import PLUGIN


@pytest.mark.timeout(40)
def test_replicas_are_nodes_and_stop_as_a_group_before_earlier_siblings(orch_tree, tmp_path):
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "pool"
        plugins = ["{PLUGIN}"]
        [[children]]
        name = "first"
        worker = "t.record"
        args = {{ log = "{log}", label = "first" }}
        [[children]]
        name = "stubborn"
        worker = "t.ignore_term"
        replicas = 3
        stop_timeout = 1.5
        [[children]]
        name = "pool"
        worker = "t.record"
        replicas = 3
        args = {{ log = "{log}", label = "pool" }}
    ''')
    pids = tree.pids()
    assert sorted(p for p in pids if p) == ["first", "pool#0", "pool#1", "pool#2",
                                           "stubborn#0", "stubborn#1", "stubborn#2"]
    for path in ("pool#0", "stubborn#2"):
        assert psutil.Process(pids[path]).ppid() == tree.root_pid
    wait_for(lambda: log.exists() and len(log.read_text().split("\n")) > 4, message="starts recorded")

    began = time.monotonic()
    os.kill(tree.pid, signal.SIGTERM)
    assert tree.wait_exit(timeout=20) == 0
    took = time.monotonic() - began

    stops = [line for line in log.read_text().splitlines() if line.startswith("stop")]
    assert stops == ["stop pool"] * 3 + ["stop first"]
    # Three SIGTERM-ignoring replicas with stop_timeout 1.5 s: one after the other
    # would take 4.5 s; as a group they are SIGKILLed together after 1.5 s.
    assert took < 4.0, f"replicas were stopped one by one ({took:.1f}s)"
    assert all(gone(pid) for pid in pids.values() if pid)
