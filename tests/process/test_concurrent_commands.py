"""Commands that race each other: restart, stop, start and reload interleaved at random never
make two processes claim one node; a second `orch down` waits for the first; a command that
cannot apply to a held node says so at once."""
from __future__ import annotations

import os
import random
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.engine import titles
from orchestrator.testing import wait_for
from tests.helpers import ORCH_ARGV, control_request, tree_text

CHAOS_SECONDS = 8.0
IN_FLIGHT = 4
NODES = ("top", "s", "s/slow", "s/x", "s/y")
# Long enough for a reload and a second command to queue behind the round it starts.
SLOW_ROUND = 3.0


def race_tree(version: int, slow_stop: float = 0.5) -> str:
    return tree_text("race", f'''
        [[children]]
        name = "top"
        worker = "t.say"
        args = {{ text = "top v{version}" }}
        stop_timeout = 0.5
        [[children]]
        name = "s"
          [[children.children]]
          name = "slow"
          worker = "t.ignore_term"
          stop_timeout = {slow_stop}
          [[children.children]]
          name = "x"
          worker = "t.say"
          args = {{ text = "x v{version}" }}
          stop_timeout = 0.5
          [[children.children]]
          name = "y"
          worker = "t.sleep"
          stop_timeout = 0.5
    ''')


def claims(root_pid: int, tree: str = "race") -> dict:
    """Node path -> pids of processes whose title claims it (OS truth, via psutil).

    Only a process whose parent claims the parent node counts: a freshly forked child
    carries its supervisor's title for a moment before it sets its own, and must not
    be mistaken for a second copy of that supervisor.
    """
    prefix = titles.node_title(tree, "")[:-len(" (root)")] + "/"
    claimed, parents = {root_pid: ""}, {}
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    for proc in procs:
        try:
            title, parents[proc.pid] = " ".join(proc.cmdline()).strip(), proc.ppid()
        except psutil.Error:
            continue
        if title.startswith(prefix):
            claimed[proc.pid] = title[len(prefix):]
    found: dict = {}
    for pid, path in claimed.items():
        if path and claimed.get(parents.get(pid)) == path.rpartition("/")[0]:
            found.setdefault(path, []).append(pid)
    return found


def orch_command(tree, rng: random.Random, version: list) -> list:
    """Biased towards what once raced: a long restart round (`slow` ignores SIGTERM) with a
    reload that replaces `x` and a restart of `x` queued behind it."""
    kind = rng.choices(["restart", "reload", "stop", "start"], weights=[8, 5, 3, 4])[0]
    if kind == "reload":
        version[0] = 3 - version[0]
        # Atomically: a reload started a moment ago may be reading the file right now.
        edited = tree.file.with_suffix(".new")
        edited.write_text(race_tree(version[0], slow_stop=1.5))
        os.replace(edited, tree.file)
        return ["reload", str(tree.file)]
    return [kind, rng.choices(NODES, weights=[2, 1, 4, 4, 1])[0]]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_random_interleaving_never_gives_a_node_two_processes(orch_tree):
    tree = orch_tree(race_tree(1, slow_stop=1.5))
    root_pid = tree.node("")["pid"]
    seed = int(os.environ.get("ORCH_RACE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    version = [1]
    running, finished, doubles = [], [], []
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline or running:
        if time.monotonic() < deadline and len(running) < IN_FLIGHT:
            args = orch_command(tree, rng, version)
            running.append((args, subprocess.Popen([*ORCH_ARGV, *args], env=tree.env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        for path, pids in claims(root_pid).items():
            if len(pids) > 1:
                doubles.append((path, pids))
        for item in [item for item in running if item[1].poll() is not None]:
            running.remove(item)
            finished.append((item[0], item[1].returncode, item[1].stderr.read()))
        time.sleep(0.02)  # the sampling pace of the checker, not synchronisation
    assert not doubles, f"seed {seed}: two processes claimed one node: {doubles[:5]}"
    crashed = [(args, code, err) for args, code, err in finished if code not in (0, 1, 2) or "Traceback" in err]
    assert not crashed, f"seed {seed}: {crashed[:3]}"
    reloads = [(args, code, err) for args, code, err in finished if args[0] == "reload" and code != 0]
    assert not reloads, f"seed {seed}: a reload's verdict was wrong: {reloads[:3]}"

    # Settle: release every hold, then exactly one process per node, parented right, no strays.
    for path in NODES:
        result = tree.orch("start", path)
        assert result.returncode in (0, 2), (seed, path, result.stderr)
    nodes = tree.wait_running(timeout=20)
    assert not [node for node in nodes if node["kind"] == "helper"], (seed, nodes)
    wait_for(lambda: all(len(claims(root_pid).get(path, ())) == 1 for path in NODES), timeout=5,
             message=f"one settled process per node (seed {seed}): {claims(root_pid)}")
    assert not [node for node in tree.nodes() if node["kind"] not in ("supervisor", "worker")]


# ----- a second `orch down`, and `--kill` ---------------------------------------------------


def graceful_tree(tmp_path: Path) -> str:
    slow_exit = tmp_path / "slow_exit.py"
    slow_exit.write_text(textwrap.dedent('''
        import os, signal, sys, time
        from orchestrator import hookimpl

        def linger(log):
            """On SIGTERM take a second to finish, then write the last record."""
            def on_term(signum, frame):
                time.sleep(1.0)
                with open(log, "a") as file:
                    file.write("last record\\n")
                sys.exit(0)
            signal.signal(signal.SIGTERM, on_term)
            while True:
                signal.pause()

        @hookimpl
        def orch_workers():
            return {"t.linger": linger}
    '''))
    return tree_text("grace", f'''
        [[children]]
        name = "sup"
          [[children.children]]
          name = "w"
          worker = "t.linger"
          args = {{ log = "{tmp_path / 'records.log'}" }}
          stop_timeout = 10
    ''', plugins=[slow_exit])


@pytest.mark.timeout(40)
def test_a_second_down_waits_for_the_graceful_stop(orch_tree, tmp_path):
    tree = orch_tree(graceful_tree(tmp_path))
    first = subprocess.Popen([*ORCH_ARGV, "down", "grace"], env=tree.env,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: tree.node("sup/w")["state"] == "stopping", message="the graceful stop under way")
    second = tree.orch("down", "grace")
    assert second.returncode == 0, second.stderr
    assert "already stopping" in second.stderr
    assert first.wait(20) == 0, first.stderr.read()
    assert (tmp_path / "records.log").read_text() == "last record\n", "the second down escalated to SIGKILL"
    assert "sending SIGKILL" not in tree.read_output() and "killing the remaining" not in tree.read_output()


@pytest.mark.timeout(40)
def test_down_kill_during_a_graceful_stop_kills_at_once(orch_tree, tmp_path):
    tree = orch_tree(graceful_tree(tmp_path))
    first = subprocess.Popen([*ORCH_ARGV, "down", "grace"], env=tree.env,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: tree.node("sup/w")["state"] == "stopping", message="the graceful stop under way")
    started = time.monotonic()
    killed = tree.orch("down", "--kill", "grace")
    assert killed.returncode == 0, killed.stderr
    assert time.monotonic() - started < 5.0
    assert first.wait(20) == 0
    assert not (tmp_path / "records.log").exists(), "--kill waited for the graceful stop"


# ----- commands that cannot apply to a held node ----------------------------------------------


HELD_TREE = tree_text("held", '''
    [[children]]
    name = "sup"
      [[children.children]]
      name = "inner"
        [[children.children.children]]
        name = "w"
        worker = "t.sleep"
    [[children]]
    name = "b"
    worker = "t.sleep"
''')


@pytest.mark.timeout(40)
@pytest.mark.parametrize("held, command, path, holder", [
    ("sup", "start", "sup/inner/w", "sup"),
    ("sup", "restart", "sup/inner/w", "sup"),
    ("sup", "restart", "sup/inner", "sup"),
    ("sup/inner", "start", "sup/inner/w", "sup/inner"),
    ("b", "restart", "b", "b"),
])
def test_commands_on_held_nodes_answer_at_once_with_the_reason(orch_tree, held, command, path, holder):
    tree = orch_tree(HELD_TREE)
    assert tree.orch("stop", held).returncode == 0
    before = {node["path"]: node["pid"] for node in tree.nodes()}
    started = time.monotonic()
    result = tree.orch(command, path)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 3.0, "it waited instead of answering"
    assert f"`orch stop {holder}`" in result.stderr and f"`orch start {holder}`" in result.stderr
    assert {node["path"]: node["pid"] for node in tree.nodes()} == before


# ----- the interleaving that once left two copies of one worker ---------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("parent", ["s", ""])
def test_a_restart_queued_behind_a_reload_acts_on_the_reloaded_node(orch_tree, parent):
    """restart slow (a long round), reload replacing x, restart x: both queue behind the round;
    the restart must act on the x the reload made, not start the replaced one again."""
    tree = orch_tree(race_tree(1, SLOW_ROUND) if parent else root_race_tree(1, SLOW_ROUND))
    root_pid = tree.node("")["pid"]
    at = (lambda name: f"{parent}/{name}") if parent else (lambda name: name)
    slow = subprocess.Popen([*ORCH_ARGV, "restart", at("slow")], env=tree.env)
    wait_for(lambda: tree.node(at("slow"))["state"] == "stopping", message="the slow round under way")
    tree.file.write_text(race_tree(2, SLOW_ROUND) if parent else root_race_tree(2, SLOW_ROUND))
    reload = subprocess.Popen([*ORCH_ARGV, "reload", str(tree.file)], env=tree.env)
    # The reload is handed to the root (and queued behind the round) once `ping` counts it.
    wait_for(lambda: ping(tree)["generation"] >= 1, timeout=10, message="the reload handed to the root")
    restart = tree.orch("restart", at("x"))
    assert (slow.wait(30), reload.wait(30), restart.returncode) == (0, 0, 0), restart.stderr
    nodes = tree.wait_running(timeout=10)
    assert not [node for node in nodes if node["kind"] == "helper"], nodes
    assert all(len(pids) == 1 for pids in claims(root_pid, "race" if parent else "rootrace").values())


def ping(tree) -> dict:
    return control_request(tree.env, tree.name, {"cmd": "ping"})


def root_race_tree(version: int, slow_stop: float = 3.0) -> str:
    return tree_text("rootrace", f'''
        [[children]]
        name = "slow"
        worker = "t.ignore_term"
        stop_timeout = {slow_stop}
        [[children]]
        name = "x"
        worker = "t.say"
        args = {{ text = "x v{version}" }}
        stop_timeout = 0.5
    ''')
