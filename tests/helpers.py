"""Helpers shared by orch's own tests: the test plugins, tree-file builders, OS checks, stops.

Import them as ``from tests.helpers import ...`` (pytest's `pythonpath` in pyproject.toml
puts the repository root on sys.path). What plugin authors need too lives in
`orchestrator.testing` instead: the `orch_tree` fixture, `RunningTree`, `wait_for`, `gone`.
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
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import psutil

from orchestrator.root import control
from orchestrator.testing import RunningTree

# ----- the test plugins and the CLI ------------------------------------------------------

PLUGINS = Path(__file__).resolve().parent / "plugins"
# t.sleep, t.record, t.ignore_term, t.exit, t.say, t.fork_helper ...
PLUGIN = PLUGINS / "testworkers.py"
# The t.* workers and the s.* ones (semantics_workers.py), as a tree's `plugins` list.
WORKERS = [str(PLUGIN), str(PLUGINS / "semantics_workers.py")]
# `orch` as a subprocess runs it, for tests that need the Popen rather than `run_orch`.
ORCH_ARGV = [sys.executable, "-m", "orchestrator"]


def ok(result: subprocess.CompletedProcess) -> None:
    """Assert that an `orch` command exited 0, showing all it printed if not."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# ----- tree files ---------------------------------------------------------------------------


def toml_value(value) -> str:
    """`value` written as TOML: strings quoted, booleans lower case, dicts as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return repr(value)


def tree_text(name: str, body: str = "", plugins: Sequence = (PLUGIN,)) -> str:
    """A tree file: `name` on line 1, `plugins` on line 2, then `body` (dedented)."""
    refs = ", ".join(toml_value(ref) for ref in plugins)
    return f'name = "{name}"\nplugins = [{refs}]\n' + textwrap.dedent(body)


def small_tree(name: str, start_method: str = "fork", daemon: bool = False) -> str:
    """The smallest tree with a supervisor: root -> a (worker), sup (supervisor) -> b (worker)."""
    return tree_text(name, f'''
        start_method = "{start_method}"
        [[children]]
        name = "a"
        worker = "t.sleep"
        daemon = {toml_value(daemon)}
        [[children]]
        name = "sup"
          [[children.children]]
          name = "b"
          worker = "t.sleep"
    ''')


def recorder(name: str, log: Path, label: Optional[str] = None, table: str = "children", **keys) -> str:
    """One `t.record` child: it appends "start LABEL" to `log`, and "stop LABEL" on SIGTERM.

    `table` places it ("children.children" under a supervisor); `keys` are more node
    keys (``restart="always"``, ``stop_timeout=2.0``).
    """
    entry = [f"[[{table}]]", f'name = "{name}"', 'worker = "t.record"',
             f"args = {toml_value({'log': str(log), 'label': label or name})}"]
    entry += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "\n" + "\n".join(entry) + "\n"


# ----- validating without plugins ------------------------------------------------------------


class FakeCatalog:
    """A plugin catalog of plain functions, to validate tree files without importing a plugin.

    Keyword names are worker names with "." written as "_": ``demo_ticker=f`` is `demo.ticker`.
    """

    def __init__(self, **functions: Callable) -> None:
        self.workers = {name.replace("_", "."): _CatalogEntry(name.replace("_", "."), function)
                        for name, function in functions.items()}


class _CatalogEntry:
    """What validation reads of a catalog's worker: its function (and, for messages, whose it is)."""

    def __init__(self, name: str, function: Callable) -> None:
        self.name, self.function, self.plugin = name, function, "fake"


# ----- what workers wrote ----------------------------------------------------------------


def lines(path: Path) -> List[str]:
    """The lines of a log a worker appends to; none while it does not exist yet."""
    return path.read_text().splitlines() if path.exists() else []


# ----- processes, as the OS sees them --------------------------------------------------------

PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())


def created_in_order(pids: Sequence[int], after: int) -> bool:
    """`pids` were created in this order, all after `after` (pids grow, wrapping at pid_max)."""
    offsets = [(pid - after) % PID_MAX for pid in pids]
    return offsets == sorted(offsets)


def ignores_sigterm(pid: int) -> bool:
    """Whether the process has set SIGTERM to be ignored (its SigIgn mask in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        mask = next(line for line in status if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def spec_pids(nodes: Iterable[dict]) -> Dict[str, Optional[int]]:
    """Node path -> pid for the spec's nodes among `orch tree` rows (helpers left out)."""
    return {node["path"]: node["pid"] for node in nodes if node["kind"] != "helper"}


def os_pids(tree: RunningTree, skip_stopped: bool = False) -> Dict[str, Tuple[int, float]]:
    """Spec node path -> (pid, create_time), each pid checked alive and parented right by psutil.

    The create time tells a process from a later one that reuses its pid. A node without
    a process fails the check, unless `skip_stopped` leaves it out (a held node has none).
    """
    nodes = [node for node in tree.nodes() if node["kind"] != "helper"]
    pid_of = {node["path"]: node["pid"] for node in nodes}
    result = {}
    for node in nodes:
        if node["pid"] is None and skip_stopped:
            continue
        assert node["pid"] is not None, node
        proc = psutil.Process(node["pid"])
        assert proc.status() != psutil.STATUS_ZOMBIE, node
        if node["path"]:
            assert proc.ppid() == pid_of[node["parent"]], f"{node['path']}: ppid {proc.ppid()}"
        result[node["path"]] = (node["pid"], proc.create_time())
    return result


def running_again(node: dict, old: int) -> Optional[dict]:
    """The `orch tree` row if the node runs in a process other than `old`, else None."""
    return node if node["state"] == "running" and node["pid"] not in (None, old) else None


def settled(node: dict) -> Optional[dict]:
    """The `orch tree` row if the node ended for good (stopped or failed), else None."""
    return node if node["state"] in ("stopped", "failed") else None


def matches_spec(tree: RunningTree) -> Union[Dict[str, dict], bool]:
    """The spec nodes by path if every one runs with the ppid the spec says (psutil), else False."""
    nodes = {n["path"]: n for n in tree.nodes() if n["kind"] != "helper"}
    for path, node in nodes.items():
        if path and (node["state"] != "running" or node["pid"] is None
                     or psutil.Process(node["pid"]).ppid() != nodes[node["parent"]]["pid"]):
            return False
    return nodes


def exited(proc: psutil.Process) -> bool:
    """Gone, or a zombie (one whose parent is not us waits for that parent, maybe a slow pid 1)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def marked(variable: str, value: str) -> Iterator[psutil.Process]:
    """Live processes (zombies and this one left out) whose environment has `variable` = `value`.

    A mark put in a test's environment survives exec and setsid, so it finds what a test
    started wherever it was reparented to.
    """
    for proc in psutil.process_iter():
        try:
            if (proc.pid != os.getpid() and proc.environ().get(variable) == value
                    and proc.status() != psutil.STATUS_ZOMBIE):
                yield proc
        except psutil.Error:
            continue


def kill_by_pid(procs: Iterable[psutil.Process], timeout: float = 5.0) -> List[psutil.Process]:
    """SIGKILL these processes and all below them, wait for them to exit; those still running then.

    psutil refuses to signal a pid that now names another process, so a reused pid is
    never hit. Descendants are listed before anything is killed: a dead parent's
    children are reparented out of reach.
    """
    procs = list(procs)
    targets = list(procs)
    for proc in procs:
        try:
            targets += proc.children(recursive=True)
        except psutil.Error:
            continue
    for proc in targets:
        try:
            proc.kill()
        except psutil.Error:
            continue
    deadline = time.monotonic() + timeout
    while (alive := [proc for proc in targets if not exited(proc)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


# ----- ending a tree (a plain SIGTERM stop is `RunningTree.stop`) ---------------------------------


def down(tree: RunningTree, timeout: float = 20.0) -> Tuple[int, int, float, str]:
    """`orch down NAME` while this test reaps the root, as an interactive shell would.

    Returns (orch down's exit code, the root's exit code, seconds taken, down's stderr).
    """
    started = time.monotonic()
    proc = subprocess.Popen([*ORCH_ARGV, "down", tree.name], env=tree.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        root_code = tree.wait_exit(timeout)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, root_code, time.monotonic() - started, err


# ----- the control socket --------------------------------------------------------------------


def socket_path(env: Dict[str, str], name: str) -> Path:
    """Where tree `name` listens, in the run directory of `env`."""
    return Path(env[control.ENV_RUN_DIR]) / name / control.SOCKET_NAME


def control_request(env: Dict[str, str], name: str, command: dict, timeout: float = 10.0) -> dict:
    """One raw control request to tree `name` of `env`'s run directory; the reply as sent."""
    old = os.environ.get(control.ENV_RUN_DIR)
    os.environ[control.ENV_RUN_DIR] = env[control.ENV_RUN_DIR]  # the client reads it from here
    try:
        return control.request(name, command, timeout=timeout)
    finally:
        if old is None:
            os.environ.pop(control.ENV_RUN_DIR, None)
        else:
            os.environ[control.ENV_RUN_DIR] = old
