"""Plugin loading as `orch` runs it: bundled, tree-file .py plugins, entry points; broken ones named."""
import json
import re
import textwrap
from pathlib import Path

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import run_orch
from tests.helpers import PLUGINS


def write_tree(tmp_path: Path, worker: str, plugins=(), start_method: str = "fork") -> Path:
    file = tmp_path / "plugged.toml"
    refs = ", ".join(f'"{ref}"' for ref in plugins)
    file.write_text(textwrap.dedent(f'''\
        name = "plugged"
        start_method = "{start_method}"
        plugins = [{refs}]
        [[children]]
        name = "w"
        worker = "{worker}"
    '''))
    return file


def listing(env) -> dict:
    result = run_orch("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {entry["plugin"]: entry["workers"] for entry in json.loads(result.stdout)}


# ----- bundled plugins and blocking -----------------------------------------------


def test_plugins_lists_the_bundled_plugins_and_their_workers(orch_env):
    plugins = listing(orch_env)
    assert {"demo.ticker", "demo.flaky", "demo.sleep"} <= set(plugins["orch_plugins.demo"])
    assert {"orch.sleep", "orch.exit", "orch.exec"} <= set(plugins["orch_plugins.basic"])
    text = run_orch("plugins", env=orch_env)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^orch_plugins\.demo$", text.stdout, re.M)
    assert re.search(r"^  demo\.ticker +\S", text.stdout, re.M), text.stdout  # with its summary


def test_disabled_plugin_hides_its_workers(tmp_path, orch_env):
    orch_env["ORCH_DISABLE_PLUGINS"] = "orch_plugins.demo"
    plugins = listing(orch_env)
    assert "orch_plugins.demo" not in plugins
    assert "orch.sleep" in plugins["orch_plugins.basic"]
    file = write_tree(tmp_path, "demo.ticker")
    result = run_orch("validate", str(file), env=orch_env)
    assert result.returncode == 2
    assert f"{file}:6: w: unknown worker 'demo.ticker'" in result.stderr
    known = re.search(r"known workers: ([^)]*)\)", result.stderr)
    assert known, result.stderr
    assert "orch.sleep" in known.group(1) and "demo." not in known.group(1)


# ----- broken tree-file plugins ---------------------------------------------------


def started_nothing(env, file: Path) -> bool:
    if (Path(env[control.ENV_RUN_DIR]) / "plugged").exists():
        return False
    return not any(str(file) in " ".join(proc.info["cmdline"] or ())
                   for proc in psutil.process_iter(["cmdline"]))


@pytest.mark.parametrize("command", ["validate", "up"])
def test_duplicate_worker_name_names_both_plugins(tmp_path, orch_env, command):
    a, b = PLUGINS / "dup_a.py", PLUGINS / "dup_b.py"
    file = write_tree(tmp_path, "dup.only_a", plugins=[a, b])
    result = run_orch(command, str(file), env=orch_env, timeout=30)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "dup.same" in line]
    assert line.startswith(f"{file}:3: ")
    assert str(a) in line and str(b) in line
    assert started_nothing(orch_env, file)


@pytest.mark.parametrize("command", ["validate", "up"])
def test_plugin_that_fails_to_import_is_named(tmp_path, orch_env, command):
    broken = PLUGINS / "broken_import.py"
    file = write_tree(tmp_path, "orch.sleep", plugins=[broken])
    result = run_orch(command, str(file), env=orch_env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert str(broken) in result.stderr
    assert "orch_tests_no_such_module" in result.stderr  # the reason, not only the culprit
    assert "Traceback" not in result.stderr
    assert started_nothing(orch_env, file)


@pytest.mark.parametrize("command", ["validate", "up"])
def test_misspelt_hook_is_reported_not_ignored(tmp_path, orch_env, command):
    misspelt = PLUGINS / "misspelt_hook.py"
    file = write_tree(tmp_path, "orch.sleep", plugins=[misspelt])
    result = run_orch(command, str(file), env=orch_env, timeout=30)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "orch_worker" in line]
    assert str(misspelt) in line
    assert started_nothing(orch_env, file)


# ----- a third-party package found by its entry point ------------------------------


THIRDPARTY = '''\
"""A third-party orch plugin, installed as a distribution with an `orch` entry point."""
import signal

from orchestrator import hookimpl


def hello():
    """Say hello, then sleep until signalled."""
    print("hello from thirdparty", flush=True)
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {"thirdparty.hello": hello}
'''


def install(site: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution: the module plus a dist-info with an `orch` entry point."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[orch]\n{dist} = {module}\n")


@pytest.fixture
def thirdparty_env(tmp_path, orch_env):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "thirdparty", "thirdparty_plugin", THIRDPARTY)
    orch_env["PYTHONPATH"] = str(site)
    orch_env.pop("ORCH_DISABLE_PLUGIN_AUTOLOAD", None)
    return orch_env


def test_entry_point_plugin_is_listed(thirdparty_env):
    assert listing(thirdparty_env)["thirdparty"] == ["thirdparty.hello"]


def test_entry_point_plugin_can_be_blocked(thirdparty_env):
    thirdparty_env["ORCH_DISABLE_PLUGINS"] = "thirdparty"
    assert "thirdparty" not in listing(thirdparty_env)


def test_entry_point_plugins_are_not_loaded_when_autoload_is_off(thirdparty_env):
    thirdparty_env["ORCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    assert "thirdparty" not in listing(thirdparty_env)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_entry_point_worker_comes_up(tmp_path, thirdparty_env, orch_tree, start_method):
    text = write_tree(tmp_path, "thirdparty.hello", start_method=start_method).read_text()
    tree = orch_tree(text, filename="thirdparty.toml")  # waits until w runs under the root
    tree.wait_for(lambda: "w | hello from thirdparty" in tree.read_output(), message="the worker's hello")
    assert tree.node("w")["state"] == "running"


def test_broken_entry_point_is_named_with_its_package(tmp_path, thirdparty_env):
    install(tmp_path / "site", "brokenparty", "brokenparty_plugin", "raise RuntimeError('no luck')\n")
    result = run_orch("validate", str(write_tree(tmp_path, "orch.sleep")), env=thirdparty_env)
    assert result.returncode == 2, result.stderr
    assert "brokenparty" in result.stderr and "no luck" in result.stderr
