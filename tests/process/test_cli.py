"""`orch up / tree / down / validate` as a user runs them, checked against psutil's view of the OS."""
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import gone, json_tree, run_orch, wait_for
from tests.helpers import ORCH_ARGV, PLUGIN, kill_by_pid, small_tree, socket_path, spec_pids

REPO = Path(__file__).parent.parent.parent
NODE_KEYS = {"path", "name", "kind", "pid", "ppid", "state", "restarts", "daemon"}


def write_tree(tmp_path: Path, name: str, **kwargs) -> Path:
    file = tmp_path / f"{name}.toml"
    file.write_text(small_tree(name, **kwargs))
    return file


def assert_mirrors_os(nodes):
    """Every spec node runs, and its pid/ppid are what psutil says; ppid is the parent node's pid."""
    by_path = {node["path"]: node for node in nodes}
    for node in nodes:
        if node["kind"] == "helper":
            continue
        assert node["state"] == "running", node
        proc = psutil.Process(node["pid"])
        assert proc.status() != psutil.STATUS_ZOMBIE, node
        assert proc.ppid() == node["ppid"], node
        if node["path"]:
            assert node["ppid"] == by_path[node["parent"]]["pid"], node


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


@pytest.fixture
def detached(orch_env):
    """Factory: `orch up FILE --detach`. Roots it reports (or that hold a run-dir lock) and their
    descendants are SIGKILLed by pid at teardown: a detached root is not our child."""
    roots = []

    def up(file: Path):
        result = run_orch("up", str(file), "--detach", env=orch_env, timeout=30)
        if result.returncode == 0:
            roots.append(psutil.Process(int(result.stdout.strip())))
        return result

    yield up
    for lock in Path(orch_env[control.ENV_RUN_DIR]).glob("*/lock"):
        try:
            proc = psutil.Process(int(lock.read_text().strip()))
            if "orch" in " ".join(proc.cmdline()):
                roots.append(proc)
        except (ValueError, OSError, psutil.Error):
            continue
    # A detached root's zombie waits for pid 1, which may be slow to reap: exited enough.
    survivors = kill_by_pid(root for root in roots if root.is_running())  # not a reused pid
    assert survivors == [], f"still running 5 s after SIGKILL: {survivors}"


# ----- up (foreground) and tree ---------------------------------------------------


def test_tree_json_lists_every_node_with_os_pids(orch_tree, orch_env):
    tree = orch_tree(small_tree("cli", daemon=True))
    nodes = json_tree(orch_env, "cli")
    assert [(n["path"], n["kind"]) for n in nodes if n["kind"] != "helper"] == [
        ("", "supervisor"), ("a", "worker"), ("sup", "supervisor"), ("sup/b", "worker")]
    for node in nodes:
        assert NODE_KEYS <= set(node), node
        assert node["restarts"] == 0
    by_path = {n["path"]: n for n in nodes}
    assert by_path[""]["pid"] == tree.root_pid and by_path[""]["name"] == "cli"
    assert by_path[""]["ppid"] == tree.pid  # the guardian: the `orch up` process
    assert by_path["a"]["daemon"] is True and by_path["sup/b"]["daemon"] is False
    assert_mirrors_os(nodes)


def test_tree_text_shows_each_node_with_its_pid(orch_tree, orch_env):
    orch_tree(small_tree("txt"))
    nodes = json_tree(orch_env, "txt")
    result = run_orch("tree", "txt", env=orch_env)
    assert result.returncode == 0, result.stderr
    for node in nodes:
        pattern = rf"(^|[─ ]){re.escape(node['name'])}\s+{node['pid']}\s+{node['ppid']}\s+running\b"
        assert re.search(pattern, result.stdout, re.M), f"{node['name']} / {node['pid']} not in:\n{result.stdout}"


@pytest.mark.parametrize("args", [["--json"], [], ["--help"]])
def test_tree_imports_neither_shutil_nor_subprocess(orch_tree, orch_env, args):
    """`orch tree` is what scripts call in a loop; argparse's help formatter alone would
    import shutil (with zlib, bz2, lzma) and the detach path subprocess: ~8 ms a call."""
    orch_tree(small_tree("lean"))
    result = subprocess.run([ORCH_ARGV[0], "-X", "importtime", *ORCH_ARGV[1:], "tree", "lean", *args],
                            env=orch_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "orchestrator.cli.main" in imported  # the import log is there
    assert not imported & {"shutil", "subprocess"}, sorted(imported & {"shutil", "subprocess"})


def test_tree_without_name_shows_the_only_tree(orch_tree, orch_env):
    tree = orch_tree(small_tree("only"))
    nodes = json_tree(orch_env)
    assert {n["tree"] for n in nodes} == {"only"}
    assert spec_pids(nodes) == tree.pids()
    text = run_orch("tree", env=orch_env)
    assert text.returncode == 0 and "tree only" in text.stdout


def test_tree_without_name_shows_both_trees(orch_tree, orch_env):
    first = orch_tree(small_tree("one"), filename="one.toml")
    second = orch_tree(small_tree("two"), filename="two.toml")
    nodes = json_tree(orch_env)
    for tree in (first, second):
        mine = [n for n in nodes if n["tree"] == tree.name]
        assert spec_pids(mine) == tree.pids()
    text = run_orch("tree", env=orch_env)
    assert text.returncode == 0
    assert "tree one" in text.stdout and "tree two" in text.stdout


def test_tree_with_nothing_running_exits_1_with_one_line(orch_env):
    for args in (["tree"], ["tree", "--json"], ["tree", "ghost"]):
        result = run_orch(*args, env=orch_env)
        assert result.returncode == 1, args
        assert result.stdout == ""
        assert "running" in one_line(result.stderr), args


# ----- up --detach and down -------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_detach_returns_when_every_node_runs_and_down_leaves_nothing(tmp_path, orch_env, detached,
                                                                      start_method):
    file = write_tree(tmp_path, "det", start_method=start_method)
    result = detached(file)
    assert result.returncode == 0, result.stderr
    root_pid = int(result.stdout.strip())
    nodes = json_tree(orch_env, "det")  # at once: no waiting after `up --detach` returned
    assert spec_pids(nodes)[""] == root_pid
    assert_mirrors_os(nodes)
    seen = [n["pid"] for n in nodes]  # with spawn, multiprocessing's resource tracker too
    assert (start_method == "spawn") == any(n["kind"] == "helper" for n in nodes)
    assert stat.S_ISSOCK(os.stat(socket_path(orch_env, "det")).st_mode)

    down = run_orch("down", "det", env=orch_env)
    assert down.returncode == 0, down.stderr
    alive = [pid for pid in seen if not gone(pid)]
    assert alive == [], f"still alive after `orch down` returned: {alive}"
    assert not socket_path(orch_env, "det").exists()
    assert run_orch("tree", "det", env=orch_env).returncode == 1


def test_detach_of_an_invalid_tree_fails_and_starts_nothing(tmp_path, orch_env, detached):
    file = tmp_path / "bad.toml"
    file.write_text(small_tree("bad").replace('worker = "t.sleep"', 'worker = "t.nope"', 1))
    result = detached(file)
    assert result.returncode == 2
    assert "unknown worker 't.nope'" in result.stderr
    assert not (Path(orch_env[control.ENV_RUN_DIR]) / "bad").exists()


def test_down_without_name_stops_the_only_tree(tmp_path, orch_env, detached):
    assert detached(write_tree(tmp_path, "solo")).returncode == 0
    seen = [n["pid"] for n in json_tree(orch_env, "solo")]
    down = run_orch("down", env=orch_env)
    assert down.returncode == 0, down.stderr
    assert [pid for pid in seen if not gone(pid)] == []


def test_down_without_name_refuses_when_several_run(orch_tree, orch_env):
    first = orch_tree(small_tree("left"), filename="left.toml")
    second = orch_tree(small_tree("right"), filename="right.toml")
    before = (first.pids(), second.pids())
    result = run_orch("down", env=orch_env)
    assert result.returncode == 2
    assert "left" in result.stderr and "right" in result.stderr
    assert (first.pids(), second.pids()) == before
    assert first.process.poll() is None and second.process.poll() is None


def test_down_with_nothing_running_exits_1(orch_env):
    for args in (["down"], ["down", "ghost"]):
        result = run_orch(*args, env=orch_env)
        assert result.returncode == 1, args
        assert one_line(result.stderr)


@pytest.mark.timeout(30)
def test_down_returns_while_the_root_awaits_reaping_by_its_parent(orch_tree, orch_env):
    """A foreground root's parent (a shell, a script, this test) reaps it only when it gets to it:
    `orch down` must count an exited-but-unreaped root as gone, not wait out the stop budget."""
    tree = orch_tree(small_tree("fg"))
    seen = list(tree.pids().values())
    down = subprocess.Popen([*ORCH_ARGV, "down", "fg"], env=orch_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Never poll tree.process here: that would reap the root and hide the bug.
        wait_for(lambda: down.poll() is not None, timeout=5,
                 message="`orch down` to return while the stopped root is not yet reaped")
        assert down.returncode == 0, down.stderr.read()
        assert [pid for pid in seen if not gone(pid)] == []
        assert tree.wait_exit() == 0
    finally:
        if down.poll() is None:
            down.kill()
        down.communicate()

@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
def test_second_up_of_the_same_name_refuses(orch_tree, orch_env, detach):
    tree = orch_tree(small_tree("twice"))
    before = tree.pids()
    args = ["up", str(tree.file)] + (["--detach"] if detach else [])
    result = run_orch(*args, env=orch_env, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "already running" in result.stderr
    assert str(tree.root_pid) in result.stderr  # it names the root that holds the tree
    assert tree.pids() == before
    assert tree.process.poll() is None
    assert_mirrors_os(tree.nodes())


# ----- a root that died without cleaning up ------------------------------------------


def kill_root_leaving_stale_socket(tree):
    seen = [pid for pid in tree.pids().values()]
    os.kill(tree.root_pid, signal.SIGKILL)  # not the guardian: the root would then remove its socket
    tree.process.wait(10)
    wait_for(lambda: all(gone(pid) for pid in seen), message="the tree to die by parent-death signal")
    assert socket_path(tree.env, tree.name).exists(), "the test needs a stale socket"


def test_stale_socket_is_reported_as_not_running(orch_tree, orch_env):
    tree = orch_tree(small_tree("stale"))
    kill_root_leaving_stale_socket(tree)
    result = run_orch("tree", "stale", env=orch_env)
    assert result.returncode == 1
    assert "not running" in one_line(result.stderr)
    assert run_orch("tree", env=orch_env).returncode == 1
    assert run_orch("down", env=orch_env).returncode == 1


def test_stale_socket_does_not_block_a_new_up(orch_tree, orch_env):
    tree = orch_tree(small_tree("again"), filename="again.toml")
    kill_root_leaving_stale_socket(tree)
    again = orch_tree(small_tree("again"), filename="again.toml")
    assert again.pid != tree.pid
    assert_mirrors_os(json_tree(orch_env, "again"))


# Asks every named tree for a ping, as fast as it can, forever: what `orch tree` in a watch
# loop, or a test's wait, does while a tree starts.
PROBE = """
import sys
from orchestrator.errors import RuntimeFailure
from orchestrator.root import control
print("probing", flush=True)
while True:
    for name in sys.argv[1:]:
        try:
            control.request(name, {"cmd": "ping"}, timeout=1.0)
        except RuntimeFailure:
            pass
"""


@pytest.mark.timeout(120)
def test_clients_asking_for_a_tree_as_it_starts_never_stop_it_starting(orch_tree, orch_env):
    """A client that found no root answering once took the tree's lock for a moment to clean
    up; a root starting in that moment refused with "already running (root pid ?)". The lock
    file outlives a root, so a tree started again (after `down`, or a crash) met it most."""
    probes = [subprocess.Popen([sys.executable, "-c", PROBE, "again"], env=orch_env,
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for probe in probes:
            assert probe.stdout.readline() == "probing\n"
        for attempt in range(6):
            tree = orch_tree(small_tree("again"), filename=f"again{attempt}.toml", wait=False)
            tree.wait_for(lambda: tree.process.poll() is not None or tree.node("")["pid"],
                          message=f"attempt {attempt} to start or exit")
            assert tree.process.poll() is None, f"attempt {attempt}: {tree.read_output()}"
            tree.wait_running()
            assert tree.stop() == 0
    finally:
        for probe in probes:
            probe.kill()
            probe.wait()
            probe.stdout.close()


@pytest.mark.timeout(120)
def test_ups_racing_for_one_tree_start_exactly_one_root(subreaper, orch_tree, orch_env):
    """Four `orch up` of one tree at once: one runs it, the others say it is already running
    (maybe before the winner wrote its pid) and leave nothing behind."""
    racers = [orch_tree(small_tree("race"), filename=f"race{i}.toml", wait=False) for i in range(4)]
    wait_for(lambda: sum(racer.process.poll() is not None for racer in racers) >= 3,
             message="three of the four to give up")
    running = [racer for racer in racers if racer.process.poll() is None]
    assert len(running) == 1, [racer.read_output() for racer in racers]
    [winner] = running
    winner.wait_running()
    for loser in racers:
        if loser is winner:
            continue
        assert loser.process.returncode == 1, loser.read_output()
        assert re.fullmatch(r"orch: tree 'race' is already running \((root pid \d+|its root is just "
                            r"starting)\); see it with `orch tree race` or stop it with `orch down race`",
                            one_line(loser.read_output())), loser.read_output()
    assert [node["pid"] for node in json_tree(orch_env, "race") if node["path"] == ""] == [winner.root_pid]
    # The losers started roots too (the lock is taken by the root, not by `orch up`). We are
    # the subreaper: anything a loser left would now be ours. Every process below us is the
    # winner's guardian or its tree.
    theirs = {winner.pid} | {proc.pid for proc in psutil.Process(winner.pid).children(recursive=True)}
    ours = {proc.pid for proc in psutil.Process().children(recursive=True)}
    assert ours - theirs == set()


# ----- run directory --------------------------------------------------------------


def test_run_dir_is_private_even_with_a_permissive_umask(orch_tree, orch_env):
    old = os.umask(0)  # inherited by the root: the modes must not depend on it
    try:
        tree = orch_tree(small_tree("private"))
    finally:
        os.umask(old)
    directory = Path(orch_env[control.ENV_RUN_DIR]) / "private"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    sock = os.stat(directory / control.SOCKET_NAME)
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o600
    assert sock.st_uid == os.getuid()
    assert tree.process.poll() is None


def test_run_dir_too_long_for_a_socket_is_refused_clearly(tmp_path, orch_env):
    orch_env[control.ENV_RUN_DIR] = str(tmp_path / ("d" * 110))
    file = write_tree(tmp_path, "longpath")
    for detach in ([], ["--detach"]):
        result = run_orch("up", str(file), *detach, env=orch_env, timeout=30)
        assert result.returncode == 1, result.stderr
        assert "too long" in result.stderr and control.ENV_RUN_DIR in result.stderr
    assert orch_processes_for(file) == []


# ----- validate and bad input ---------------------------------------------------------


def test_validate_demo_tree(orch_env):
    result = run_orch("validate", str(REPO / "trees" / "demo.toml"), env=orch_env)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def orch_processes_for(file: Path):
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(file) in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
def test_up_of_an_invalid_file_reports_every_problem_and_starts_nothing(tmp_path, orch_env, detach):
    file = tmp_path / "invalid.toml"
    file.write_text(textwrap.dedent(f'''\
        name = "invalid"
        plugins = ["{PLUGIN}"]
        [[children]]
        name = "a"
        worker = "t.sleep"
        restrat = "always"
        [[children]]
        name = "b"
        worker = "t.sleep"
        stop_timeout = -1
    '''))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = run_orch("up", str(file), *(["--detach"] if detach else []), env=orch_env, timeout=30)
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if not line.startswith("orch: ")]
    assert len(problems) == 2, result.stderr
    for line in problems:
        assert re.fullmatch(rf"{re.escape(str(file))}:\d+: [\w/]+: .+", line), line
    assert f"{file}:6: a: unknown key 'restrat'" in problems[0]
    assert problems[1].startswith(f"{file}:10: b: ")
    assert "nothing was started" in result.stderr
    assert not (Path(orch_env[control.ENV_RUN_DIR]) / "invalid").exists()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert orch_processes_for(file) == []


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["up"], ["validate"], ["tree", "--bogus"], ["up", "x.toml", "--nope"],
], ids=["nothing", "bad-command", "up-no-file", "validate-no-file", "bad-option", "up-bad-option"])
def test_bad_command_line_exits_2(orch_env, args):
    result = run_orch(*args, env=orch_env)
    assert result.returncode == 2, result
    assert "usage:" in result.stderr


def test_missing_tree_file_exits_2(tmp_path, orch_env):
    result = run_orch("up", str(tmp_path / "missing.toml"), env=orch_env)
    assert result.returncode == 2, result
    assert "missing.toml" in result.stderr

