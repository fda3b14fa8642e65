"""Shell completion: the scripts `orch completion` prints, argcomplete's protocol answered with the
running trees' names and node paths, and argcomplete kept off the path of `orch up`."""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from orchestrator.testing import run_orch
from tests.helpers import ORCH_ARGV, tree_text

IFS = "\013"  # argcomplete separates completions with a vertical tab


def complete(line: str, env: Dict[str, str], tmp_path: Path) -> List[str]:
    """What `orch` answers when bash asks it to complete `line` (the cursor at its end), the
    way argcomplete's own tests drive it: `_ARGCOMPLETE`, `COMP_LINE`, `COMP_POINT`, the
    answer in the file `_ARGCOMPLETE_STDOUT_FILENAME` names."""
    out = tmp_path / "completions"
    result = subprocess.run(ORCH_ARGV, env=dict(env, _ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash",
                                                 COMP_LINE=line, COMP_POINT=str(len(line)),
                                                 _ARGCOMPLETE_STDOUT_FILENAME=str(out)),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return sorted(word.strip() for word in out.read_text().split(IFS) if word.strip())


def nested(name: str) -> str:
    return tree_text(name, '''
        [[children]]
        name = "web"
        worker = "t.sleep"
        replicas = 2
        [[children]]
        name = "pipeline"
          [[children.children]]
          name = "reader"
          worker = "t.sleep"
    ''')


def test_node_paths_of_the_only_tree_and_of_the_named_one(orch_tree, orch_env, tmp_path):
    orch_tree(nested("alpha"), filename="alpha.toml")
    assert complete("orch restart pipe", orch_env, tmp_path) == ["pipeline", "pipeline/reader"]
    assert complete("orch stop web", orch_env, tmp_path) == ["web#0", "web#1"]
    orch_tree(nested("beta").replace('name = "reader"', 'name = "writer"'), filename="beta.toml")
    # Two trees run: a path needs the tree named first.
    assert complete("orch restart pipeline/", orch_env, tmp_path) == []
    assert complete("orch restart --tree beta pipeline/", orch_env, tmp_path) == ["pipeline/writer"]
    assert complete("orch logs -t alpha pipeline/", orch_env, tmp_path) == ["pipeline/reader"]


def test_tree_names_of_the_running_trees(orch_tree, orch_env, tmp_path):
    orch_tree(nested("alpha"), filename="alpha.toml")
    orch_tree(nested("another"), filename="another.toml")
    assert complete("orch tree a", orch_env, tmp_path) == ["alpha", "another"]
    assert complete("orch down an", orch_env, tmp_path) == ["another"]
    assert complete("orch restart web --tree al", orch_env, tmp_path) == ["alpha"]


def test_commands_options_shells_and_tree_files(orch_env, tmp_path, monkeypatch):
    assert complete("orch re", orch_env, tmp_path) == ["reload", "restart"]
    assert complete("orch tree --n", orch_env, tmp_path) == ["--no-color"]
    assert complete("orch completion ", orch_env, tmp_path) == ["bash", "zsh"]
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "demo.toml").write_text("")
    (tmp_path / "files" / "notes.txt").write_text("")
    assert complete(f"orch up {tmp_path}/files/", orch_env, tmp_path) == [f"{tmp_path}/files/demo.toml"]
    # Nothing running: no names, no paths, and no error.
    assert complete("orch down ", orch_env, tmp_path) == []
    assert complete("orch restart ", orch_env, tmp_path) == []


def test_bash_script_registers_and_completes_through_bash(orch_tree, orch_env, tmp_path):
    result = run_orch("completion", "bash", env=orch_env)
    assert result.returncode == 0 and "_python_argcomplete" in result.stdout
    checked = subprocess.run(["bash", "-c", f"source <({sys.executable} -m orchestrator completion bash) "
                              "&& complete -p orch"], env=orch_env, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().endswith("-F _python_argcomplete orch")
    # The whole chain: bash runs the completion function, which runs `orch` (a shim on PATH).
    orch_tree(nested("gamma"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "orch"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m orchestrator \"$@\"\n")
    shim.chmod(0o755)
    script = ('source <(orch completion bash)\n'
              'COMP_LINE="orch restart pipeline/"; COMP_POINT=${#COMP_LINE}\n'
              'COMP_WORDS=(orch restart pipeline/); COMP_CWORD=2\n'
              '_python_argcomplete orch 2>/dev/null\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = dict(orch_env, PATH=f"{bin_dir}{os.pathsep}{orch_env.get('PATH', '')}")
    ran = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["pipeline/reader"]


def test_zsh_script(orch_env):
    result = run_orch("completion", "zsh", env=orch_env)
    assert result.returncode == 0
    assert result.stdout.startswith("#compdef orch") and "compdef _python_argcomplete orch" in result.stdout
    if shutil.which("zsh"):
        checked = subprocess.run(["zsh", "-c", "autoload -U compinit && compinit -u && "
                                  f"source <({sys.executable} -m orchestrator completion zsh) && "
                                  "print ${_comps[orch]}"],
                                 env=orch_env, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0 and checked.stdout.strip() == "_python_argcomplete", checked


@pytest.mark.parametrize("shell", ["fish", "powershell", ""])
def test_an_unsupported_shell_is_one_line_and_exit_2(orch_env, shell):
    result = run_orch("completion", shell, env=orch_env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"orch: no completion for shell {shell!r}; supported shells: bash, zsh\n"


def test_argcomplete_is_never_imported_by_up_or_tree(orch_env):
    for args in (["up", "--help"], ["tree"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", *args],
                                env=orch_env, capture_output=True, text=True, timeout=30)
        assert "orchestrator.cli.main" in result.stderr  # the import log is there
        assert "argcomplete" not in result.stderr and "orchestrator.cli.completion" not in result.stderr
        assert "orchestrator.cli.progress" not in result.stderr
