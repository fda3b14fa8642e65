"""`max_memory` (issue #9): a node whose RSS passes its limit is stopped, restarted, counted as a failure."""
from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from orchestrator.testing import wait_for
from tests.helpers import PLUGINS, tree_text

pytestmark = pytest.mark.timeout(40)


def text(name: str, body: str) -> str:
    return tree_text(name, body, plugins=(PLUGINS / "envworkers.py", PLUGINS / "testworkers.py"))


def starts(log: Path) -> list:
    return log.read_text().splitlines() if log.exists() else []


def test_a_worker_growing_past_max_memory_is_stopped_restarted_and_counted(orch_tree, tmp_path):
    log = tmp_path / "grow.log"
    tree = orch_tree(text("memgrow", f'''
memory_check = 0.2
[[children]]
name = "hog"
worker = "e.grow"
args = {{ log = "{log}" }}
max_memory = "60MB"
restart = "on-failure"
[[children]]
name = "calm"
worker = "t.sleep"
max_memory = "1GB"
'''))
    calm = tree.node("calm")["pid"]
    wait_for(lambda: len(starts(log)) >= 2, timeout=20)
    first = int(starts(log)[0].split()[1])
    hog = wait_for(lambda: (lambda node: node if node["state"] == "running" and node["pid"] != first
                            else None)(tree.node("hog")))
    assert hog["failures"] == 1 and hog["restarts"] == 1
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert tree.node("calm")["pid"] == calm and tree.node("calm")["failures"] == 0
    output = wait_for(lambda: "memory_limit" in tree.read_output() and tree.read_output())
    line = next(line for line in output.splitlines() if "memory_limit" in line)
    assert "hog" in line and "max_memory 60.0MB" in line, line


def test_a_helper_in_the_workers_group_counts_toward_its_sum(orch_tree, tmp_path):
    log = tmp_path / "helper.log"
    # The worker itself stays small; its helper holds 80MB.
    tree = orch_tree(text("memhelper", f'''
memory_check = 0.2
[[children]]
name = "w"
worker = "e.helper_hog"
args = {{ log = "{log}", size = {80 << 20} }}
max_memory = "50MB"
restart = "never"
'''), wait=False)
    wait_for(lambda: starts(log), timeout=20)
    worker, helper = (int(pid) for pid in starts(log)[0].split()[1:])
    node = wait_for(lambda: (lambda n: n if n["state"] == "failed" else None)(tree.node("w")), timeout=20)
    assert node["failures"] == 1
    for pid in (worker, helper):
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    assert "w: memory_limit exceeded" in tree.read_output()


def test_a_supervisors_limit_covers_its_subtree(orch_tree, tmp_path):
    log = tmp_path / "sub.log"
    tree = orch_tree(text("memsub", f'''
memory_check = 0.2
[[children]]
name = "sup"
max_memory = "300MB"
  [[children.children]]
  name = "small"
  worker = "t.sleep"
  [[children.children]]
  name = "deep"
    [[children.children.children]]
    name = "hog"
    worker = "e.grow"
    args = {{ log = "{log}", step = {8 << 20} }}
'''))
    sup = tree.node("sup")["pid"]
    node = wait_for(lambda: (lambda n: n if n["pid"] not in (None, sup) and n["state"] == "running" else None)(
        tree.node("sup")), timeout=30)
    assert node["failures"] == 1
    assert "sup: memory_limit exceeded" in tree.read_output()


def test_max_memory_values_are_checked_and_located(tmp_path):
    from orchestrator.errors import InvalidInput
    from orchestrator.spec.validate import load_tree

    file = tmp_path / "bad.toml"
    file.write_text(text("membad", '''memory_check = 0
max_memory = "1GB"
[[children]]
name = "a"
worker = "t.sleep"
max_memory = "12 parsecs"
[[children]]
name = "b"
worker = "t.sleep"
max_memory = true
[[children]]
name = "c"
worker = "t.sleep"
max_memory = "10MB"
memory_check = 1.0
[[children]]
name = "d"
worker = "t.sleep"
max_memory = 1048576
'''))
    with pytest.raises(InvalidInput) as raised:
        load_tree(str(file))
    shown = str(raised.value)
    assert f"{file}:3: (root): 'memory_check' must be > 0 seconds, got 0" in shown
    assert f"{file}:4: (root): 'max_memory' does not apply to the root" in shown
    assert f"{file}:8: a: 'max_memory' must be a size like \"512KB\", \"10MB\" or \"1GB\"" in shown
    assert f"{file}:12: b: 'max_memory' must be a number of bytes" in shown
    assert f"{file}:17: c: 'memory_check' is only for supervisors" in shown
    assert ":21:" not in shown
    file.write_text(text("memok", '[[children]]\nname = "d"\nworker = "t.sleep"\nmax_memory = "10MB"\n'))
    assert next(node for node in load_tree(str(file)).nodes() if node.name == "d").max_memory == 10 << 20
