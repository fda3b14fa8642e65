"""The demo-shaped tree comes up and mirrors the spec in the OS."""
from pathlib import Path

import psutil

PLUGIN = Path(__file__).parent.parent / "plugins" / "testworkers.py"


def test_nested_tree_mirrors_spec(orch_tree):
    tree = orch_tree(f'''
        name = "smoke"
        plugins = ["{PLUGIN}"]
        [[children]]
        name = "a"
        worker = "t.sleep"
        [[children]]
        name = "sup"
          [[children.children]]
          name = "b"
          worker = "t.sleep"
    ''')
    pids = tree.pids()
    assert psutil.Process(pids["a"]).ppid() == tree.root_pid
    assert psutil.Process(pids["sup"]).ppid() == tree.root_pid
    assert psutil.Process(pids["sup/b"]).ppid() == pids["sup"]
