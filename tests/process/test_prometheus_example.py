"""The example third-party plugin in examples/orch-prometheus: its hook in-process, then installed by pip.

The first part imports the package from the example's source folder and feeds it
`Event`s, scraping its server on 127.0.0.1 with urllib. The second installs it with pip
into a private folder, so orch finds it by its `orch` entry point, and runs a real tree
whose root delivers events to it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.events import Event
from orchestrator.spec import catalog
from orchestrator.testing import RunningTree, WaitTimeout, run_orch, wait_for
from tests.helpers import running_again

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orch-prometheus"
SOURCE = EXAMPLE / "src"
TREE = "prom"

# (metric sample name, frozenset of its labels) -> value
Samples = Dict[Tuple[str, frozenset], float]


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as reply:
        text = reply.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, path: str, tree: str = TREE) -> Optional[float]:
    return samples.get((name, frozenset({"tree": tree, "path": path}.items())))


def event(kind: str, path: str, ts: Optional[float] = None, **fields) -> Event:
    return Event(ts=time.time() if ts is None else ts, tree=TREE, path=path, event=kind, **fields)


# ----- the hook in this process ----------------------------------------------------------


@pytest.fixture
def plugin(monkeypatch):
    """The example package imported from its source folder, its exporter reset afterwards."""
    monkeypatch.syspath_prepend(str(SOURCE))
    monkeypatch.delenv("ORCH_PROMETHEUS_HOST", raising=False)
    monkeypatch.delenv("ORCH_PROMETHEUS_PORT", raising=False)
    import orch_prometheus

    assert Path(orch_prometheus.__file__).resolve().is_relative_to(SOURCE), orch_prometheus.__file__
    orch_prometheus._exporter = None
    yield orch_prometheus
    if orch_prometheus._exporter is not None:
        orch_prometheus._exporter.close()
        orch_prometheus._exporter = None


def test_importing_the_plugin_starts_nothing():
    # The root, `orch validate` and every catalog load import it: no server, no thread,
    # not even prometheus_client until the first event.
    code = textwrap.dedent('''
        import json, sys, threading
        import orch_prometheus
        print(json.dumps({"threads": threading.active_count(),
                          "client": "prometheus_client" in sys.modules,
                          "exporter": orch_prometheus._exporter is None}))
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), *sys.path]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"threads": 1, "client": False, "exporter": True}


def test_the_catalog_accepts_a_plugin_with_only_orch_event(plugin):
    loaded = catalog.load_catalog(["orch_prometheus"])  # as a tree-file plugin: same checks
    assert ("orch_prometheus", ()) in loaded.plugins
    assert not any(entry.plugin == "orch_prometheus" for entry in loaded.workers.values())


def test_hook_serves_node_metrics_on_the_configured_port(plugin, monkeypatch):
    port = free_port()
    monkeypatch.setenv("ORCH_PROMETHEUS_PORT", str(port))
    monkeypatch.setenv("ORCH_PROMETHEUS_HOST", "127.0.0.1")
    now = time.time()
    plugin.orch_event(event("started", "", now - 10, pid=100))
    plugin.orch_event(event("started", "a", now - 10, pid=101))
    plugin.orch_event(event("started", "b", now - 10, pid=102))
    plugin.orch_event(event("ready", "b", now - 9))
    samples = scrape(port)
    for path in ("", "a", "b"):
        assert value(samples, "orch_node_up", path) == 1
        assert value(samples, "orch_node_restarts_total", path) == 0
        assert value(samples, "orch_node_last_exit_code", path) is None  # no exit yet
        assert 10 <= value(samples, "orch_node_uptime_seconds", path) < 60

    plugin.orch_event(event("exited", "b", signal=signal.SIGKILL, restarts=0))
    samples = scrape(port)
    assert value(samples, "orch_node_up", "b") == 0
    assert value(samples, "orch_node_uptime_seconds", "b") == 0
    assert value(samples, "orch_node_last_exit_code", "b") == -signal.SIGKILL

    plugin.orch_event(event("restarting", "b", restarts=0))  # orch's count before this restart
    plugin.orch_event(event("started", "b", pid=103, restarts=1))
    samples = scrape(port)
    assert value(samples, "orch_node_up", "b") == 1
    assert value(samples, "orch_node_restarts_total", "b") == 1
    assert value(samples, "orch_node_last_exit_code", "b") == -signal.SIGKILL  # the last exit stays
    assert 0 <= value(samples, "orch_node_uptime_seconds", "b") < 10
    assert value(samples, "orch_node_restarts_total", "a") == 0

    plugin.orch_event(event("stopping", "a"))
    assert value(scrape(port), "orch_node_up", "a") == 1  # still has its process
    plugin.orch_event(event("stopped", "a", exit_code=0))
    samples = scrape(port)
    assert value(samples, "orch_node_up", "a") == 0
    assert value(samples, "orch_node_last_exit_code", "a") == 0
    assert samples[("orch_events_total", frozenset({"tree": TREE, "path": "b", "event": "started"}.items()))] == 2


def test_uptime_is_computed_when_scraped(plugin):
    from orch_prometheus.exporter import Exporter

    clock = [1000.0]
    exporter = Exporter(clock=lambda: clock[0])
    exporter.record(event("started", "w", ts=990.0))
    labels = {"tree": TREE, "path": "w"}
    assert exporter.registry.get_sample_value("orch_node_uptime_seconds", labels) == 10
    clock[0] = 1030.0  # no event in between
    assert exporter.registry.get_sample_value("orch_node_uptime_seconds", labels) == 40
    exporter.record(event("gave_up", "w", ts=1031.0, reason="too many restarts"))
    assert exporter.registry.get_sample_value("orch_node_uptime_seconds", labels) == 0
    assert exporter.registry.get_sample_value("orch_node_up", labels) == 0


def test_restarts_are_orchs_count_also_after_a_backoff_wait(plugin):
    # A crash loop as the root reports it: only the first restart has a `restarting`
    # event; later ones wait in `backoff` first. Each event carries orch's count.
    from orch_prometheus.exporter import Exporter

    exporter = Exporter()
    for kind, restarts in [("started", 0), ("exited", 0), ("restarting", 0), ("started", 1),
                           ("exited", 1), ("backoff", 1), ("started", 2),
                           ("exited", 2), ("backoff", 2), ("started", 3)]:
        exporter.record(event(kind, "w", restarts=restarts, exit_code=1 if kind == "exited" else None))
    labels = {"tree": TREE, "path": "w"}
    assert exporter.registry.get_sample_value("orch_node_restarts_total", labels) == 3
    assert exporter.registry.get_sample_value("orch_node_up", labels) == 1
    assert exporter.registry.get_sample_value("orch_node_last_exit_code", labels) == 1


def test_tree_level_events_are_counted_without_inventing_a_node(plugin):
    from orch_prometheus.exporter import Exporter

    exporter = Exporter()
    exporter.record(event("events_lost", "", reason="3 events lost"))
    assert exporter.registry.get_sample_value("orch_node_up", {"tree": TREE, "path": ""}) is None
    assert exporter.registry.get_sample_value(
        "orch_events_total", {"tree": TREE, "path": "", "event": "events_lost"}) == 1


def test_a_taken_port_is_reported_once_and_events_still_count(plugin, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("ORCH_PROMETHEUS_PORT", str(port))
        with pytest.raises(RuntimeError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}: .*ORCH_PROMETHEUS_PORT"):
            plugin.orch_event(event("started", "a", pid=1))
        plugin.orch_event(event("exited", "a", exit_code=3))  # no second error
        plugin.orch_event(event("started", "a", pid=2, restarts=1))
    registry = plugin._exporter.registry
    assert plugin._exporter.address is None
    assert registry.get_sample_value("orch_node_restarts_total", {"tree": TREE, "path": "a"}) == 1
    assert registry.get_sample_value("orch_node_last_exit_code", {"tree": TREE, "path": "a"}) == 3


def test_a_bad_port_setting_is_reported_with_the_variable(plugin, monkeypatch):
    monkeypatch.setenv("ORCH_PROMETHEUS_PORT", "http")
    with pytest.raises(RuntimeError, match="ORCH_PROMETHEUS_PORT must be a port number .*'http'"):
        plugin.orch_event(event("started", "a", pid=1))
    plugin.orch_event(event("started", "b", pid=2))


# ----- installed by pip, loaded by its entry point, fed by a real tree ------------------------


def builds_wheels_offline() -> bool:
    """Whether this venv's setuptools can build a wheel by itself: from 70.1 it has
    bdist_wheel; before, it needs the `wheel` package."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return major_minor >= (70, 1) or importlib.util.find_spec("wheel") is not None


def pip_install(source: Path, target: Path) -> None:
    """`pip install --no-deps --target`: without build isolation when this venv can build
    a wheel by itself (works offline), else, or if that fails, with it (pip fetches
    setuptools from the package index, as CI can)."""
    base = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
            "--target", str(target)]
    attempts = [base + ["--no-build-isolation", str(source)]] if builds_wheels_offline() else []
    attempts.append(base + [str(source)])
    outputs: List[str] = []
    for argv in attempts:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=150)
        if result.returncode == 0:
            return
        outputs.append(f"$ {' '.join(argv)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    pytest.fail("pip could not install examples/orch-prometheus:\n" + "\n".join(outputs))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed into a private folder (a copy is built: setuptools writes
    build/ and *.egg-info next to the sources)."""
    work = tmp_path_factory.mktemp("orch-prometheus")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    pip_install(source, target)
    assert (target / "orch_prometheus" / "__init__.py").exists()
    return target


@pytest.fixture
def prometheus_env(site, tmp_path, orch_env) -> Dict[str, str]:
    """orch's environment with the example on the path and entry points loaded."""
    orch_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), orch_env.get("PYTHONPATH")]))
    orch_env.pop("ORCH_DISABLE_PLUGIN_AUTOLOAD", None)
    orch_env["ORCH_PROMETHEUS_HOST"] = "127.0.0.1"
    orch_env["ORCH_PROMETHEUS_PORT"] = str(free_port())
    orch_env["ORCH_LOG_DIR"] = str(tmp_path / "logs")  # events.jsonl, for a failure's message
    return orch_env


@pytest.mark.timeout(180)  # the first test to use `site` waits for pip
def test_installed_plugin_is_listed_without_workers(prometheus_env):
    result = run_orch("plugins", "--json", env=prometheus_env)
    assert result.returncode == 0, result.stderr
    assert {"plugin": "prometheus", "workers": []} in json.loads(result.stdout)


def wait_scrape(tree: RunningTree, port: int, check: Callable[[Samples], bool], message: str,
                timeout: float = 15.0) -> Samples:
    """Scrape until `check` holds; on timeout say what was scraped and what the root logged."""
    last: List[Samples] = [{}]

    def attempt() -> Optional[Samples]:
        last[0] = scrape(port)
        return last[0] if check(last[0]) else None

    try:
        return wait_for(attempt, timeout, message, interval=0.05)
    except WaitTimeout as error:
        events = tree.env["ORCH_LOG_DIR"] + f"/{tree.name}/events.jsonl"
        logged = Path(events).read_text() if os.path.exists(events) else "(no events.jsonl)"
        raise WaitTimeout(f"{error}\nlast scrape: {last[0]}\nevents.jsonl:\n{logged}\n"
                          f"orch up output:\n{tree.read_output()}") from None


@pytest.mark.timeout(180)
def test_metrics_follow_a_killed_worker(prometheus_env, orch_tree):
    port = int(prometheus_env["ORCH_PROMETHEUS_PORT"])
    tree = orch_tree(f'''
        name = "{TREE}"
        [[children]]
        name = "a"
        worker = "orch.sleep"
        [[children]]
        name = "b"
        worker = "orch.sleep"
    ''')
    wait_scrape(tree, port, lambda s: value(s, "orch_node_up", "a") == 1 and value(s, "orch_node_up", "b") == 1,
                "orch_node_up 1 for a and b")

    old = tree.node("b")["pid"]
    os.kill(old, signal.SIGKILL)
    tree.wait_for(lambda: running_again(tree.node("b"), old), message="b running again in a new process")

    samples = wait_scrape(tree, port, lambda s: value(s, "orch_node_restarts_total", "b") == 1
                          and value(s, "orch_node_up", "b") == 1, "b restarted once and up again")
    assert value(samples, "orch_node_last_exit_code", "b") == -signal.SIGKILL
    assert value(samples, "orch_node_up", "a") == 1
    assert value(samples, "orch_node_restarts_total", "a") == 0
    assert value(samples, "orch_node_last_exit_code", "a") is None
    assert value(samples, "orch_node_uptime_seconds", "b") < value(samples, "orch_node_uptime_seconds", "a")
