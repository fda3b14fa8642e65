"""The demo-shaped tree comes up and mirrors the spec in the OS."""
import psutil

from tests.helpers import small_tree


def test_nested_tree_mirrors_spec(orch_tree):
    tree = orch_tree(small_tree("smoke"))
    pids = tree.pids()
    assert psutil.Process(pids["a"]).ppid() == tree.root_pid
    assert psutil.Process(pids["sup"]).ppid() == tree.root_pid
    assert psutil.Process(pids["sup/b"]).ppid() == pids["sup"]
