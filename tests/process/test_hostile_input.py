"""Files, paths, plugins and names a careless or hostile user hands orch: the root never
blocks on them, never reads what is not a regular file, never dies of plugin code, and
never touches a directory outside its own run directory."""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import textwrap
from pathlib import Path

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import run_orch, wait_for
from tests import helpers
from tests.helpers import ORCH_ARGV, PLUGIN, control_request

pytestmark = pytest.mark.timeout(60)


def tree_text(name: str = "host", plugins=(), extra: str = "") -> str:
    """root -> a, sup (-> w); `plugins` after the test workers, on line 2; `extra` appended."""
    return helpers.tree_text(name, '''
        [[children]]
        name = "a"
        worker = "t.sleep"
        [[children]]
        name = "sup"
          [[children.children]]
          name = "w"
          worker = "t.sleep"
    ''', (PLUGIN, *plugins)) + textwrap.dedent(extra)


def assert_still_supervising(tree, before: dict) -> None:
    """The root answers, the tree is unchanged, and a SIGKILLed worker is replaced within 2 s."""
    assert tree.pids() == before
    victim = before["sup/w"]
    os.kill(victim, signal.SIGKILL)

    def replaced():
        pid = tree.node("sup/w")["pid"]
        return pid not in (None, victim) and psutil.Process(pid).ppid() == before["sup"]
    wait_for(replaced, timeout=2.0, message="the killed worker replaced under its supervisor")


# ----- paths a client names: the root reads none of them --------------------------------


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "tree.fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("what", ["fifo", "own fd", "directory", "device", "socket", "file"])
def test_a_request_naming_a_path_is_refused_without_opening_it(orch_tree, tmp_path, fifo, what):
    tree = orch_tree(tree_text())
    before = tree.pids()
    paths = {"fifo": fifo, "own fd": Path("/dev/fd/3"), "directory": tmp_path, "device": Path("/dev/zero"),
             "socket": tmp_path / "s.sock", "file": tree.file}
    if what == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(paths["socket"]))
    for command in ("diff", "reload"):
        reply = control_request(tree.env, tree.name, {"cmd": command, "file": str(paths[what])}, timeout=5.0)
        assert reply["ok"] is False and "does not open files for clients" in reply["error"], reply
    assert_still_supervising(tree, before)


def test_diff_of_a_fifo_reads_it_in_the_client_and_the_root_never_waits(orch_tree, fifo):
    tree = orch_tree(tree_text())
    before = tree.pids()
    client = subprocess.Popen([*ORCH_ARGV, "diff", str(fifo)], env=tree.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The client blocks opening the FIFO (nobody writes yet); the root must not.
        assert_still_supervising(tree, before)
        with open(fifo, "w") as writer:
            writer.write(tree_text(extra='[[children]]\nname = "b"\nworker = "t.sleep"\n'))
        out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert "+ add     b" in out and "Traceback" not in err


def test_diff_of_a_process_substitution_reads_the_clients_fd(orch_tree):
    tree = orch_tree(tree_text())
    before = tree.pids()
    edited = tree.file.with_name("edited.toml")
    edited.write_text(tree_text(extra='[[children]]\nname = "b"\nworker = "t.sleep"\n'))
    argv = " ".join(ORCH_ARGV)
    result = subprocess.run(["bash", "-c", f"{argv} diff <(cat {edited})"], env=tree.env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "+ add     b" in result.stdout
    assert_still_supervising(tree, before)


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "directory"])
def test_special_files_give_a_located_error(orch_env, tmp_path, special):
    path = str(tmp_path) if special == "directory" else special
    for command in ("validate", "diff"):
        result = run_orch(command, path, env=orch_env, timeout=30)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith(f"{path}:") and "Traceback" not in result.stderr


def test_sighup_with_the_file_replaced_by_a_fifo_refuses_and_carries_on(orch_tree):
    tree = orch_tree(tree_text())
    before = tree.pids()
    tree.file.unlink()
    os.mkfifo(tree.file)
    os.kill(before[""], signal.SIGHUP)
    tree.wait_for(lambda: "not a regular file" in tree.read_output(), message="the refusal logged")
    assert "reload on SIGHUP refused" in tree.read_output()
    assert_still_supervising(tree, before)


# ----- plugins that raise anything at all --------------------------------------------

PLUGIN_BODIES = {
    "argparse": "import argparse\nargparse.ArgumentParser(prog='tool').parse_args(['--nope'])\n",
    "exit 0": "import sys\nsys.exit(0)\n",
    "exit string": "raise SystemExit('bye from the plugin')\n",
    "keyboard interrupt": "raise KeyboardInterrupt\n",
    "generator exit": "raise GeneratorExit\n",
    "exception": "raise RuntimeError('broken plugin')\n",
    "hook exits": ("import sys\nfrom orchestrator import hookimpl\n"
                   "@hookimpl\ndef orch_workers():\n    sys.exit(3)\n"),
    "hook interrupts": ("from orchestrator import hookimpl\n"
                        "@hookimpl\ndef orch_workers():\n    raise KeyboardInterrupt\n"),
}


@pytest.mark.parametrize("how", ["reload", "SIGHUP"])
@pytest.mark.parametrize("body", list(PLUGIN_BODIES))
def test_a_plugin_that_raises_anything_is_refused_and_the_tree_is_untouched(orch_tree, tmp_path, body, how):
    tree = orch_tree(tree_text())
    before = tree.pids()
    bad = tmp_path / "badplugin.py"
    bad.write_text(PLUGIN_BODIES[body])
    tree.file.write_text(tree_text(plugins=[bad]))
    plugins_line = 2  # `plugins = [...]` in tree_text
    if how == "reload":
        result = tree.orch("reload", str(tree.file))
        assert result.returncode == 2, result.stderr
        messages = result.stderr
    else:
        os.kill(before[""], signal.SIGHUP)
        tree.wait_for(lambda: "reload on SIGHUP refused" in tree.read_output(), message="the refusal")
        messages = tree.read_output()
    lines = [line[len("orch: "):] if line.startswith("orch: ") else line for line in messages.splitlines()]
    located = [line for line in lines if line.startswith(f"{tree.file}:{plugins_line}: ")]
    assert located, messages
    assert "badplugin" in located[0] and "Traceback" not in messages
    if body == "argparse":
        assert "sys.exit(2)" in located[0] and "usage: tool" in located[0]
    assert_still_supervising(tree, before)


# ----- names and run directories ------------------------------------------------------

UNSAFE_NAMES = [".", "..", ".hidden", "-rf", "a" * 101]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_tree_and_node_names_are_located_errors(orch_env, tmp_path, name):
    base = Path(orch_env[control.ENV_RUN_DIR])
    os.chmod(base, 0o755)
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (base, base.parent)}
    for text, line, where in ((f'name = "{name}"\n[[children]]\nname = "w"\nworker = "orch.sleep"\n', 1, "(root)"),
                              (f'name = "t"\n[[children]]\nname = "{name}"\nworker = "orch.sleep"\n', 3,
                               "children[0]")):
        file = tmp_path / "unsafe.toml"
        file.write_text(text)
        for command in (("validate",), ("up",), ("up", "--detach")):
            result = run_orch(*command, str(file), env=orch_env, timeout=30)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr.startswith(f"{file}:{line}: {where}: name "), result.stderr
    assert {path: stat.S_IMODE(path.stat().st_mode) for path in modes} == modes
    assert list(base.iterdir()) == [], "nothing may be created for an invalid tree"


@pytest.mark.parametrize("name", ["..", ".", "../x", ".x"])
@pytest.mark.parametrize("command", [("down",), ("tree",), ("restart", "a", "--tree")])
def test_unsafe_names_on_the_command_line_are_usage_errors(orch_env, name, command):
    result = run_orch(*command, name, env=orch_env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "is not a tree name" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["a file", "under /proc", "a dangling symlink", "another's mode"])
def test_a_bad_run_directory_is_a_one_line_error(orch_env, tmp_path, where):
    env = dict(orch_env)
    target = tmp_path / "target"
    if where == "a file":
        target.write_text("not a directory")
        env[control.ENV_RUN_DIR] = str(target)
    elif where == "under /proc":
        env[control.ENV_RUN_DIR] = "/proc/orch-run"
    elif where == "a dangling symlink":
        os.symlink(tmp_path / "nowhere" / "deeper", target)
        target = tmp_path / "nowhere"  # the symlink's target's parent: must not be created
        env[control.ENV_RUN_DIR] = str(tmp_path / "target")
    else:
        target.mkdir(mode=0o700)
        (target / "t").mkdir()
        os.chmod(target / "t", 0o755)  # a tree directory open to others: refuse, never chmod
        env[control.ENV_RUN_DIR] = str(target)
    file = tmp_path / "ok.toml"
    file.write_text('name = "t"\n[[children]]\nname = "w"\nworker = "orch.sleep"\n')
    for command in (("up", str(file)), ("up", "--detach", str(file)), ("tree",), ("down", "t")):
        result = run_orch(*command, env=env, timeout=30)
        assert result.returncode in (1, 2), (command, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if where == "a dangling symlink":
        assert not target.exists(), "orch created a directory outside its run directory"
    if where == "another's mode":
        assert stat.S_IMODE((target / "t").stat().st_mode) == 0o755
        assert "chmod 700" in run_orch("up", str(file), env=env).stderr
