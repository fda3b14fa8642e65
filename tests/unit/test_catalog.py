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


# ----- what a spawned worker is handed instead of the catalog (engine/child.py) -----------


def test_worker_ref_of_a_bundled_worker_is_its_module_and_name():
    from orchestrator.spec.catalog import worker_ref

    assert worker_ref((), "orch.sleep") == ("orch_plugins.basic", "sleep", None)


def test_worker_ref_of_a_tree_file_plugin_names_its_file(tmp_path):
    from orchestrator.engine.child import _import_ref
    from orchestrator.spec.catalog import worker_ref

    plugin = tmp_path / "fileplug.py"
    plugin.write_text("from orchestrator import hookimpl\ndef work():\n    return 'ran'\n"
                      "@hookimpl\ndef orch_workers():\n    return {'file.work': work}\n")
    ref = worker_ref([str(plugin)], "file.work")
    assert ref is not None and ref[1] == "work" and ref[2] == str(plugin)
    assert _import_ref(ref)() == "ran"


def test_worker_ref_is_none_without_an_importable_name(tmp_path):
    from orchestrator.spec.catalog import worker_ref

    plugin = tmp_path / "lambdas.py"
    plugin.write_text("from orchestrator import hookimpl\n"
                      "@hookimpl\ndef orch_workers():\n    return {'l.work': lambda: None}\n")
    assert worker_ref([str(plugin)], "l.work") is None
    assert worker_ref([str(plugin)], "no.such.worker") is None


def test_import_ref_that_fails_is_none_so_the_catalog_decides():
    from orchestrator.engine.child import _import_ref

    assert _import_ref(("no_such_module_anywhere", "work", None)) is None
    assert _import_ref(("orch_plugins.basic", "no_such_function", None)) is None


@pytest.mark.parametrize("options", [{}, {"tryfirst": True}, {"trylast": True, "specname": "orch_workers"},
                                     {"hookwrapper": True}, {"wrapper": True, "optionalhook": True}])
def test_light_hookimpl_marks_as_pluggy_does(options):
    import pluggy

    from orchestrator.engine.child import LightHookimpl

    def ours():
        pass

    def theirs():
        pass

    (LightHookimpl()(**options)(ours) if options else LightHookimpl()(ours))
    (pluggy.HookimplMarker("orch")(**options)(theirs) if options else pluggy.HookimplMarker("orch")(theirs))
    assert ours.orch_impl == theirs.orch_impl


def test_notify_address_env_is_the_one_notify_uses():
    from orchestrator.engine import child, notify

    assert child.NOTIFY_ADDRESS_ENV == notify.ADDRESS_ENV
