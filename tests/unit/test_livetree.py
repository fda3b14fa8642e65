"""livetree.snapshot reads /proc itself: the same facts psutil gives, by either way of finding the tree."""
import os
import subprocess
import time

import psutil
import pytest

from orchestrator.root import livetree


@pytest.fixture
def child():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_snapshot_matches_psutil_for_a_child(child):
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_SLEEPING:  # exec'd and sleeping
        assert time.monotonic() < deadline, "the child never went to sleep"
        time.sleep(0.01)
    live = livetree.snapshot(os.getpid())
    assert os.getpid() in live and child.pid in live
    ours, theirs = live[child.pid], psutil.Process(child.pid)
    assert ours.ppid == os.getpid()
    assert ours.pgid == os.getpgid(child.pid)
    assert ours.status == theirs.status()
    assert ours.create_time == pytest.approx(theirs.create_time(), abs=0.02)
    assert ours.rss == pytest.approx(theirs.memory_info().rss, rel=0.5)
    assert ours.cpu is not None and ours.cpu >= 0
    assert ours.name == theirs.name()


def test_walk_and_ppid_scan_find_the_same_tree(child):
    walked = livetree._walk(os.getpid())
    scanned = livetree._by_ppid(os.getpid(), [int(name) for name in os.listdir("/proc") if name.isdigit()])
    assert set(walked) == set(scanned) >= {os.getpid(), child.pid}


def test_a_gone_root_gives_an_empty_snapshot(child):
    child.kill()
    child.wait()
    assert livetree.snapshot(child.pid) == {}
