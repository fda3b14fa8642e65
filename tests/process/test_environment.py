"""`env`, `env_file`, `cwd`, `user`/`group` (issue #9) against real processes."""
from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import psutil
import pytest

from orchestrator.testing import run_orch, wait_for
from tests.helpers import PLUGINS, ok, tree_text

pytestmark = pytest.mark.timeout(40)

ENV_PLUGIN = PLUGINS / "envworkers.py"


def text(name: str, body: str) -> str:
    return tree_text(name, body, plugins=(ENV_PLUGIN, PLUGINS / "testworkers.py"))


def shown(out: Path, pid: int = 0) -> dict:
    """What the e.show_env worker wrote, once it is there (from a process other than `pid`)."""
    def ready():
        try:
            report = json.loads(out.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return report if report["pid"] != pid else None
    return wait_for(ready)


def show(table: str, name: str, out: Path, extra: str = "") -> str:
    keys = json.dumps(["A", "B", "C", "D", "F"])
    return (f'\n[[{table}]]\nname = "{name}"\nworker = "e.show_env"\n'
            f'args = {{ out = "{out}", keys = {keys} }}\n{extra}\n')


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_env_and_cwd_are_inherited_and_overridden_down_three_levels(orch_tree, tmp_path, start_method):
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "inner").mkdir()
    (tmp_path / "vars.env").write_text('# a comment\nexport D="from file"\nF=\'quoted\'\n\nC=file\n')
    out_top, out_mid, out_deep = tmp_path / "top.json", tmp_path / "mid.json", tmp_path / "deep.json"
    tree = orch_tree(text("envtree", f'''
start_method = "{start_method}"
env = {{ A = "root", B = "root" }}
cwd = "top"
''' + show("children", "w1", out_top) + '''
[[children]]
name = "sup"
env = { B = "sup", C = "sup" }
env_file = "vars.env"
''' + show("children.children", "w2", out_mid) + '''
[[children.children]]
name = "inner"
cwd = "top/inner"
env = { C = "inner" }
''' + show("children.children.children", "w3", out_deep, 'env = { A = "w3" }')))
    top, mid, deep = shown(out_top), shown(out_mid), shown(out_deep)
    assert top["env"] == {"A": "root", "B": "root", "C": None, "D": None, "F": None}
    # env_file under env on the same node: C from `env` wins over the file's C.
    assert mid["env"] == {"A": "root", "B": "sup", "C": "sup", "D": "from file", "F": "quoted"}
    assert deep["env"] == {"A": "w3", "B": "sup", "C": "inner", "D": "from file", "F": "quoted"}
    assert top["cwd"] == mid["cwd"] == str(tmp_path / "top")
    assert deep["cwd"] == str(tmp_path / "top" / "inner")
    # Supervisors run in their directory too (their /proc environ is overwritten by
    # the process title, so it cannot be read back from outside).
    assert psutil.Process(tree.node("sup/inner")["pid"]).cwd() == str(tmp_path / "top" / "inner")


def test_a_reload_changing_env_restarts_that_node_only(orch_tree, tmp_path):
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    body = '\n[[children]]\nname = "sup"\n' + show("children.children", "a", out_a, 'env = { A = "1" }')
    tree = orch_tree(text("envreload", body + show("children.children", "b", out_b)))
    first_a, first_b = shown(out_a), shown(out_b)
    sup_pid = tree.node("sup")["pid"]
    new = tree.file.with_name("next.toml")
    new.write_text(text("envreload", body.replace('A = "1"', 'A = "2"') + show("children.children", "b", out_b)))
    diff = tree.orch("diff", str(new))
    assert "restart sup/a (env)" in diff.stdout, diff.stdout
    ok(tree.orch("reload", str(new)))
    assert shown(out_a, first_a["pid"])["env"]["A"] == "2"
    assert tree.node("sup")["pid"] == sup_pid
    assert tree.node("sup/b")["pid"] == first_b["pid"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs orch to run as root")


@needs_root
def test_user_nobody_runs_the_worker_as_nobody(orch_tree, tmp_path):
    nobody = pwd.getpwnam("nobody")
    tree = orch_tree(text("envuser", '''
[[children]]
name = "w"
worker = "t.sleep"
user = "nobody"
[[children]]
name = "sup"
user = "nobody"
  [[children.children]]
  name = "inner"
  worker = "t.sleep"
[[children]]
name = "plain"
worker = "t.sleep"
'''))
    for path in ("w", "sup", "sup/inner"):
        proc = psutil.Process(tree.node(path)["pid"])
        assert proc.uids().real == proc.uids().effective == nobody.pw_uid, path
        assert proc.gids().real == proc.gids().effective == nobody.pw_gid, path
    assert psutil.Process(tree.node("plain")["pid"]).uids().real == 0
    # The parent-death signal survives the user switch: a SIGKILLed supervisor's
    # worker (running as nobody) dies with it.
    inner = psutil.Process(tree.node("sup/inner")["pid"])
    psutil.Process(tree.node("sup")["pid"]).kill()
    wait_for(lambda: not inner.is_running() or inner.status() == psutil.STATUS_ZOMBIE)


def validate(tmp_path: Path, body: str) -> str:
    file = tmp_path / "bad.toml"
    file.write_text(text("envbad", body))
    result = run_orch("validate", str(file))
    assert result.returncode == 2, result
    return result.stdout + result.stderr


def test_validation_errors_are_located(tmp_path):
    (tmp_path / "plain-file").write_text("")
    (tmp_path / "broken.env").write_text("OK=1\nnot a line\n")
    out = validate(tmp_path, '''
env = { A = 5, B = true }
env_file = "missing.env"
[[children]]
name = "w"
worker = "t.sleep"
cwd = "plain-file"
env_file = "broken.env"
[[children]]
name = "x"
worker = "t.sleep"
group = "no-such-group-here"
user = "no-such-user-here"
''')
    file = tmp_path / "bad.toml"
    assert f'{file}:4: (root): env \'A\' must be a string, got integer 5; quote it: A = "5"' in out
    assert f'{file}:4: (root): env \'B\' must be a string, got boolean true; quote it: B = "true"' in out
    assert f"{file}:5: (root): env_file 'missing.env': no such file" in out
    assert f"{file}:9: w: cwd 'plain-file' is not an existing directory" in out
    assert f"{file}:10: w: env_file 'broken.env': line 2: expected KEY=value" in out
    if os.geteuid() == 0:
        assert f"{file}:15: x: unknown user 'no-such-user-here'" in out
    else:
        assert f"{file}:15: x: 'user' needs orch to run as root" in out


def test_env_file_must_be_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.env")
    out = validate(tmp_path, 'env_file = "fifo.env"\n[[children]]\nname = "w"\nworker = "t.sleep"\n')
    assert f"{tmp_path / 'bad.toml'}:3: (root): env_file 'fifo.env': not a regular file" in out


def test_user_key_without_root_is_a_located_error(tmp_path, monkeypatch):
    # As a non-root orch sees it (the suite may run as root): validated in-process.
    from orchestrator.errors import InvalidInput
    from orchestrator.spec import environ
    from orchestrator.spec.validate import load_tree

    monkeypatch.setattr(environ.os, "geteuid", lambda: 1000)
    file = tmp_path / "bad.toml"
    file.write_text(text("envnonroot", '[[children]]\nname = "w"\nworker = "t.sleep"\nuser = "nobody"\n'))
    with pytest.raises(InvalidInput) as raised:
        load_tree(str(file))
    assert f"{file}:6: w: 'user' needs orch to run as root to switch the node's user; it runs as uid 1000" \
        in str(raised.value)
