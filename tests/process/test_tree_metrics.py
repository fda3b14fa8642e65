"""`rss` and `cpu` in `orch tree`: a node's process group's memory, CPU percent between samples."""
import re

import psutil

from orchestrator.root.livetree import CpuMeter, LiveProcess
from orchestrator.testing import run_orch, wait_for
from tests.helpers import PLUGINS, tree_text

METRICS = PLUGINS / "metricworkers.py"
MB = 1 << 20


def metrics_tree(name: str, body: str) -> str:
    return tree_text(name, 'start_method = "fork"\n' + body, plugins=[METRICS])


def by_path(nodes):
    return {node["path"]: node for node in nodes}


def test_rss_counts_what_a_worker_holds(orch_tree):
    tree = orch_tree(metrics_tree("mem", f'''
        [[children]]
        name = "big"
        worker = "m.hold"
        args = {{size = {50 * MB}}}
        [[children]]
        name = "idle"
        worker = "m.hold"
        args = {{size = 0}}
    '''))
    nodes = tree.wait_for(lambda: (lambda n: n if n["big"]["rss"] >= 50 * MB else None)(by_path(tree.nodes())),
                          message="big's rss reaching 50 MB")
    # A forked worker's RSS also counts the pages it shares with the root (~20 MB here), so
    # the idle one is not near zero: what matters is that the 50 MB hog shows as a difference.
    assert nodes["idle"]["rss"] is not None and 0 < nodes["idle"]["rss"] <= nodes["big"]["rss"] - 30 * MB, nodes
    for node in nodes.values():  # every row has both fields; the root's is its own group's
        assert "rss" in node and "cpu" in node, node
    assert nodes[""]["rss"] >= psutil.Process(nodes[""]["pid"]).memory_info().rss // 2


def test_rss_of_a_worker_includes_the_helpers_in_its_process_group(orch_tree):
    tree = orch_tree(metrics_tree("grp", f'''
        [[children]]
        name = "w"
        worker = "m.helper_hold"
        args = {{size = {50 * MB}}}
    '''))

    def grown():
        nodes = tree.nodes()
        helpers = [n for n in nodes if n["kind"] == "helper" and n["parent"] == "w"]
        return (by_path(nodes)["w"], helpers[0]) if helpers and helpers[0]["rss"] >= 50 * MB else None

    worker, helper = tree.wait_for(grown, message="the helper holding 50 MB")
    own = psutil.Process(worker["pid"]).memory_info().rss
    assert own < 50 * MB, own  # the worker itself holds little: its row counts the helper
    assert worker["rss"] >= 50 * MB, (worker, helper)
    assert helper["rss"] < worker["rss"]


def test_cpu_is_percent_of_a_core_between_two_samples(orch_tree):
    tree = orch_tree(metrics_tree("cpu", '''
        [[children]]
        name = "busy"
        worker = "m.spin"
        [[children]]
        name = "idle"
        worker = "m.hold"
        args = {size = 0}
    '''))

    def measured():
        nodes = by_path(tree.nodes())
        busy, idle = nodes["busy"]["cpu"], nodes["idle"]["cpu"]
        return nodes if busy is not None and idle is not None and busy > 50 and idle < 5 else None

    # Each `tree` request is a sample, measured against the one before: poll ~0.2 s apart.
    wait_for(measured, message="busy > 50% and idle < 5% of a core", interval=0.2)


def test_cpu_meter_is_none_first_then_percent_and_forgets_the_gone(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr("orchestrator.root.livetree.time.monotonic", lambda: next(clock))
    meter = CpuMeter()

    def live(cpu, create_time=1.0):
        return {7: LiveProcess(7, 1, "running", create_time, "x", rss=1, cpu=cpu, pgid=7)}

    assert meter.percents(live(1.0)) == {7: None}
    assert meter.percents(live(2.0)) == {7: 50.0}  # 1 CPU second over 2 s
    assert meter.percents(live(2.0, create_time=5.0)) == {7: None}  # a reused pid starts over


def test_tree_text_shows_rss_and_cpu_columns(orch_tree, orch_env):
    tree = orch_tree(metrics_tree("txtm", f'''
        [[children]]
        name = "big"
        worker = "m.hold"
        args = {{size = {50 * MB}}}
    '''))
    tree.wait_for(lambda: by_path(tree.nodes())["big"]["rss"] >= 50 * MB, message="big's rss at 50 MB")
    result = run_orch("tree", "txtm", env=orch_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.search(r"\bUPTIME\s+RSS\s+CPU%\s+KIND$", lines[1]), lines[1]
    big = next(line for line in lines if re.search(r"[─ ]big\s", line))
    # ... UPTIME, then RSS in binary units (at least 50M), then CPU% (a number, or "-"
    # on a process's first sample), then KIND.
    match = re.search(r"\s(\d+\.\d)M\s+(\d+\.\d|-)\s+worker$", big)
    assert match and float(match.group(1)) >= 50, result.stdout
    # The new columns line up with the header.
    assert lines[1].index("CPU%") + 4 == len(big) - len("  worker"), result.stdout
