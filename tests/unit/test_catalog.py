"""Plugin loading in-process: bundled plugins, tree plugins, attribution of duplicates."""
import pytest

from orchestrator.spec.catalog import PluginError, load_catalog


def test_bundled_plugins_provide_the_demo_workers():
    catalog = load_catalog()
    assert catalog.workers["demo.ticker"].plugin == "orch_plugins.demo"
    assert catalog.workers["orch.sleep"].plugin == "orch_plugins.basic"


def test_duplicate_worker_names_both_plugins(tmp_path):
    for name in ("first", "second"):
        (tmp_path / f"{name}.py").write_text(
            "from orchestrator import hookimpl\n"
            "@hookimpl\ndef orch_workers():\n    return {'dup.work': print}\n")
    with pytest.raises(PluginError) as caught:
        load_catalog([str(tmp_path / "first.py"), str(tmp_path / "second.py")])
    message = str(caught.value)
    assert "dup.work" in message and "first.py" in message and "second.py" in message


def test_misspelt_hook_is_reported(tmp_path):
    plugin = tmp_path / "typo.py"
    plugin.write_text("from orchestrator import hookimpl\n@hookimpl\ndef orch_worker():\n    return {}\n")
    with pytest.raises(PluginError) as caught:
        load_catalog([str(plugin)])
    assert "orch_worker" in str(caught.value) and "typo.py" in str(caught.value)


def test_non_dict_result_names_the_plugin(tmp_path):
    plugin = tmp_path / "listy.py"
    plugin.write_text("from orchestrator import hookimpl\n@hookimpl\ndef orch_workers():\n    return ['x']\n")
    with pytest.raises(PluginError) as caught:
        load_catalog([str(plugin)])
    assert "listy.py" in str(caught.value) and "must return a dict" in str(caught.value)


def test_blocked_plugin_is_not_loaded(monkeypatch):
    monkeypatch.setenv("ORCH_DISABLE_PLUGINS", "orch_plugins.demo")
    assert "demo.ticker" not in load_catalog().workers
