"""The plugin author's surface is small, typed and documented; pin it."""
import inspect
from pathlib import Path

import pluggy

import orchestrator
from orchestrator import hookspecs


def test_public_names_are_pinned():
    assert sorted(orchestrator.__all__) == ["WorkerFn", "__version__", "hookimpl"]


def test_hookimpl_marks_for_project_orch():
    assert isinstance(orchestrator.hookimpl, pluggy.HookimplMarker)
    assert orchestrator.hookimpl.project_name == "orch"


def test_package_is_typed():
    assert (Path(orchestrator.__file__).parent / "py.typed").exists()


def test_every_hook_is_documented():
    hooks = [obj for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("orch_")]
    assert hooks, "no hooks found"
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert "Called" in doc and "Return" in doc, f"{hook.__name__} lacks when/what docs"
        assert hook.__annotations__.get("return"), f"{hook.__name__} has no return type"
