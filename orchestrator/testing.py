"""Pytest helpers for orch and for plugin authors: run a real tree, wait on facts, clean up by pid.

Enable with ``pytest_plugins = ["orchestrator.testing"]`` in a ``conftest.py``; then the
``orch_tree`` fixture starts trees that are killed by pid when the test ends, even
when it fails::

    def test_my_worker(orch_tree):
        tree = orch_tree('''
            name = "t"
            [[children]]
            name = "w"
            worker = "myapp.consumer"
        ''')
        tree.wait_for(lambda: tree.node("w")["state"] == "running")
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

import psutil
import pytest

from orchestrator.engine.states import NodeState
from orchestrator.root import control
from orchestrator.root import livetree
from orchestrator.errors import RuntimeFailure

DEFAULT_TIMEOUT = 10.0

_T = TypeVar("_T")  # what a waited-for predicate returns


class WaitTimeout(AssertionError):
    pass


def wait_for(predicate: Callable[[], _T], timeout: float = DEFAULT_TIMEOUT,
             message: str = "condition", interval: float = 0.01) -> _T:
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (RuntimeFailure, psutil.Error, KeyError, OSError) as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {message}{detail}")
        time.sleep(interval)


gone = livetree.is_gone


def json_lines(path: Path) -> List[dict]:
    """The records of a JSON-lines file a running tree is writing (events.jsonl, a json log).

    Only whole lines: the root writes a batch of records at once, and a read racing that
    write can end inside a record, which the next read will have whole.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    whole = data[:data.rfind(b"\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


def descendants(pid: int) -> List[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


class RunningTree:
    """A tree started by `orch up` in a subprocess; every pid it shows is remembered for cleanup."""

    def __init__(self, file: Path, name: str, env: Dict[str, str], output: Path) -> None:
        self.file = file
        self.name = name
        self.env = env
        self.output = output
        self.seen: Dict[int, float] = {}  # pid -> create_time, so a reused pid is never killed
        self._root_pid: Optional[int] = None
        self._log_dir: Optional[Path] = None
        self._log = open(output, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "up", str(file)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        self._remember(self.process.pid)

    @property
    def pid(self) -> int:
        """The `orch up` process: the guardian, whose child is the root (see `root_pid`)."""
        return self.process.pid

    @property
    def root_pid(self) -> int:
        """The root node's pid, from the tree view (asked once: it never changes)."""
        if self._root_pid is None:
            self._root_pid = self.node("")["pid"]
        return self._root_pid

    @property
    def log_dir(self) -> Path:
        """Where the tree writes its node logs, orch.log and events.jsonl (asked while it runs)."""
        if self._log_dir is None:
            with _run_dir(self.env):
                self._log_dir = Path(control.request(self.name, {"cmd": "ping"}, timeout=5.0)["log_dir"])
        return self._log_dir

    def orch(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the `orch` CLI against this tree's run directory."""
        return run_orch(*args, env=self.env, timeout=timeout)

    def nodes(self) -> List[dict]:
        with _run_dir(self.env):
            reply = control.request(self.name, {"cmd": "tree"}, timeout=5.0)
        if not reply.get("ok"):
            raise RuntimeFailure(reply.get("error", "tree request failed"))
        for node in reply["nodes"]:
            if node["pid"] and node["pid"] not in self.seen:
                self._remember(node["pid"])
        return reply["nodes"]

    def _remember(self, pid: int) -> None:
        try:
            self.seen[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            pass

    def node(self, path: str) -> dict:
        for node in self.nodes():
            if node["path"] == path:
                return node
        raise KeyError(path)

    def pids(self) -> Dict[str, Optional[int]]:
        """Node path -> pid for spec nodes (helpers left out)."""
        return {node["path"]: node["pid"] for node in self.nodes() if node["kind"] != "helper"}

    def wait_for(self, predicate: Callable[[], _T], timeout: float = DEFAULT_TIMEOUT,
                 message: str = "condition") -> _T:
        return wait_for(predicate, timeout, f"{message} (output so far:\n{self.read_output()})")

    def wait_running(self, timeout: float = DEFAULT_TIMEOUT) -> List[dict]:
        """Wait until every spec node runs with the ppid the spec says (OS truth)."""
        def all_running():
            nodes = [n for n in self.nodes() if n["kind"] != "helper"]
            return nodes if all(_mirrors_spec(n, nodes) for n in nodes) else None
        return self.wait_for(all_running, timeout, "every node running with the right ppid")

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """SIGTERM `orch up`, as a service manager would, and reap it; its exit code (0 when
        the stop went as asked, even if a worker had to be SIGKILLed after its stop_timeout).

        By the time it returns every worker has exited (its SIGTERM handler, if any, has
        run), and nothing is left for the fixture to kill.
        """
        os.kill(self.pid, signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"root did not exit within {timeout:g}s; output:\n{self.read_output()}")

    def read_output(self) -> str:
        self._log.flush()
        return self.output.read_text(errors="replace")

    def kill_everything(self) -> None:
        """Cleanup by pid: the guardian, its live descendants and every pid ever seen."""
        targets: Dict[int, Optional[float]] = {proc.pid: None for proc in descendants(self.process.pid)}
        targets.update(self.seen)  # with create times, so a reused pid is left alone
        killed = [pid for pid, created in targets.items()
                  if livetree.signal_if_same(pid, created, signal.SIGKILL)]
        livetree.wait_gone(killed, timeout=5)
        if self.process.poll() is None:
            self.process.wait(5)
        self._log.close()


def _mirrors_spec(node: dict, nodes: List[dict]) -> bool:
    if node["path"] == "":
        return node["state"] == NodeState.RUNNING and node["pid"] is not None
    parent = next(n for n in nodes if n["path"] == node["parent"])
    return node["state"] == NodeState.RUNNING and node["pid"] is not None and node["ppid"] == parent["pid"]


class _run_dir:
    """Point the in-process control client at a tree's run directory for one call."""

    def __init__(self, env: Dict[str, str]) -> None:
        self._value = env.get(control.ENV_RUN_DIR)

    def __enter__(self):
        self._old = os.environ.get(control.ENV_RUN_DIR)
        if self._value is not None:
            os.environ[control.ENV_RUN_DIR] = self._value

    def __exit__(self, *exc):
        if self._old is None:
            os.environ.pop(control.ENV_RUN_DIR, None)
        else:
            os.environ[control.ENV_RUN_DIR] = self._old


def run_orch(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60.0,
             input: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, timeout=timeout,
                          capture_output=True, text=True, input=input)


def isolated_env(tmp_path: Path) -> Dict[str, str]:
    """An environment with a private run directory and no stray installed plugins."""
    env = dict(os.environ)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    env[control.ENV_RUN_DIR] = str(run_dir)
    # Node logs, orch.log and events.jsonl of a tree without a `[log] dir` go to <tmp>/logs/<tree>.
    env["ORCH_LOG_DIR"] = str(tmp_path / "logs")
    env["ORCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def orch_env(tmp_path: Path) -> Dict[str, str]:
    return isolated_env(tmp_path)


@pytest.fixture
def orch_tree(tmp_path: Path, orch_env: Dict[str, str]) -> Iterator[Callable[..., RunningTree]]:
    """Factory: ``orch_tree(toml_text, name=None)`` starts a tree; all of it is killed at teardown."""
    started: List[RunningTree] = []

    def start(text: str, filename: str = "tree.toml", wait: bool = True) -> RunningTree:
        file = tmp_path / filename
        file.write_text(textwrap.dedent(text))
        name = _name_of(file)
        tree = RunningTree(file, name, orch_env, tmp_path / f"{file.stem}.out")
        started.append(tree)
        if wait:
            tree.wait_running()
        return tree

    yield start
    for tree in started:
        tree.kill_everything()


def _name_of(file: Path) -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads(file.read_text())["name"]


def json_tree(env: Dict[str, str], name: Optional[str] = None) -> List[dict]:
    """`orch tree --json [NAME]` through the real CLI, parsed."""
    args = ["tree", "--json"] + ([name] if name else [])
    result = run_orch(*args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
