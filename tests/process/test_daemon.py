"""`daemon = true` nodes: they die with their parent, are killed without waiting, and may supervise."""
import os
import signal

import psutil
import pytest

from orchestrator.testing import descendants, gone, wait_for
from tests.helpers import WORKERS, down, ignores_sigterm, lines


@pytest.mark.timeout(30)
def test_children_of_a_sigkilled_supervisor_die_with_it(orch_tree):
    """The daemon worker, the daemon supervisor's subtree, and (today) the non-daemon worker too.

    Every node sets a parent-death SIGKILL (osproc.die_with_parent), so `n` is not
    orphaned either, although it is not a daemon.
    """
    tree = orch_tree(f'''
        name = "orphans"
        plugins = {WORKERS!r}
        [[children]]
        name = "sup"
          [[children.children]]
          name = "d"
          worker = "t.sleep"
          daemon = true
          [[children.children]]
          name = "n"
          worker = "t.sleep"
          [[children.children]]
          name = "dsup"
          daemon = true
            [[children.children.children]]
            name = "g"
            worker = "t.sleep"
    ''')
    old = tree.pids()
    assert psutil.Process(old["sup/dsup/g"]).ppid() == old["sup/dsup"]

    os.kill(old["sup"], signal.SIGKILL)

    for path in ("sup/d", "sup/dsup", "sup/dsup/g", "sup/n"):
        wait_for(lambda: gone(old[path]), timeout=3, message=f"{path} ({old[path]}) gone after sup was killed")
    new = {node["path"]: node["pid"] for node in tree.wait_running()}
    assert new["sup"] != old["sup"] and psutil.Process(new["sup"]).ppid() == tree.root_pid
    assert psutil.Process(new["sup/dsup/g"]).ppid() == new["sup/dsup"]
    assert down(tree)[:2] == (0, 0)


@pytest.mark.timeout(30)
def test_daemon_ignoring_sigterm_is_killed_without_waiting_its_stop_timeout(orch_tree, tmp_path):
    log = tmp_path / "log"
    tree = orch_tree(f'''
        name = "nowait"
        plugins = {WORKERS!r}
        [[children]]
        name = "n"
        worker = "t.record"
        args = {{ log = "{log}", label = "n" }}
        [[children]]
        name = "d"
        worker = "t.ignore_term"
        daemon = true
        stop_timeout = 30
    ''')
    pids = tree.pids()
    wait_for(lambda: ignores_sigterm(pids["d"]) and lines(log) == ["start n"], message="d and n armed")

    down_code, root_code, seconds, err = down(tree)

    assert (down_code, root_code) == (0, 0), err
    assert seconds < 10, f"orch down took {seconds:.1f}s: it waited for the daemon's 30 s stop_timeout"
    assert lines(log) == ["start n", "stop n"], "the non-daemon sibling still stops gracefully"
    assert gone(pids["d"]) and gone(pids["n"])


@pytest.mark.timeout(30)
def test_daemon_supervisor_runs_its_children(orch_tree):
    tree = orch_tree(f'''
        name = "dsup"
        plugins = {WORKERS!r}
        [[children]]
        name = "dsup"
        daemon = true
          [[children.children]]
          name = "x"
          worker = "t.sleep"
          [[children.children]]
          name = "inner"
            [[children.children.children]]
            name = "y"
            worker = "t.sleep"
    ''')
    pids = tree.pids()
    assert tree.node("dsup")["daemon"] is True
    assert psutil.Process(pids["dsup"]).ppid() == tree.root_pid
    assert psutil.Process(pids["dsup/x"]).ppid() == pids["dsup"]
    assert psutil.Process(pids["dsup/inner"]).ppid() == pids["dsup"]
    assert psutil.Process(pids["dsup/inner/y"]).ppid() == pids["dsup/inner"]

    down_code, root_code, _, err = down(tree)

    assert (down_code, root_code) == (0, 0), err
    assert all(gone(pid) for pid in pids.values())
    assert descendants(tree.pid) == []
