"""A spawned worker imports only what it needs: its own module, found where the parent resolved it;
the plugin catalog is loaded in the worker only when that cannot be imported alone."""
import os
import re
import signal

import pytest

from tests.helpers import PLUGINS

SPAWNWORKERS = PLUGINS / "spawnworkers.py"


def tree_text(worker: str, start_method: str = "spawn", plugins=(SPAWNWORKERS,)) -> str:
    refs = ", ".join(f'"{ref}"' for ref in plugins)
    return f'''
        name = "boot"
        start_method = "{start_method}"
        plugins = [{refs}]
        [[children]]
        name = "w"
        worker = "{worker}"
    '''


def wait_line(tree, line: str) -> None:
    tree.wait_for(lambda: re.search(rf"^{re.escape(line)}$", tree.read_output(), re.M) is not None,
                  message=f"the line {line!r}")


def test_spawned_worker_imports_neither_the_catalog_nor_pluggy_attrs_psutil(orch_tree):
    tree = orch_tree(tree_text("spawn.heavy"))
    wait_line(tree, "w | heavy: none")


def test_spawned_worker_still_imports_only_its_module_after_a_restart(orch_tree):
    tree = orch_tree(tree_text("spawn.heavy"))
    wait_line(tree, "w | heavy: none")
    first = tree.node("w")["pid"]
    os.kill(first, signal.SIGKILL)
    tree.wait_for(lambda: tree.node("w")["pid"] not in (None, first) and tree.node("w")["state"] == "running",
                  message="w restarted")
    tree.wait_for(lambda: tree.read_output().count("w | heavy: none") == 2, message="the second start's line")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_without_an_importable_name_runs_through_the_catalog(orch_tree, start_method):
    tree = orch_tree(tree_text("spawn.closure", start_method))
    wait_line(tree, "w | closure runs")
    assert tree.node("w")["state"] == "running"


def test_bundled_worker_under_spawn(orch_tree):
    tree = orch_tree(tree_text("orch.exit", plugins=()).replace(
        'worker = "orch.exit"', 'worker = "orch.exit"\nargs = { message = "bye", after = 0.0 }\nrestart = "never"'),
        wait=False)
    wait_line(tree, "w | bye")
    tree.wait_for(lambda: tree.node("w")["state"] == "stopped", message="w to exit 0")
