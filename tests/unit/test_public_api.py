"""The plugin author's surface is small, typed and documented; pin it."""
import inspect
from pathlib import Path

import pluggy

import orchestrator
from orchestrator import hookspecs


def test_public_names_are_pinned():
    assert sorted(orchestrator.__all__) == ["Event", "WorkerFn", "__version__", "hookimpl"]


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


def test_worker_api_is_pinned_documented_and_inert_outside_orch(monkeypatch):
    from orchestrator import worker

    assert sorted(worker.__all__) == ["extend_timeout", "heartbeat", "notify", "ready", "status"]
    for name in worker.__all__:
        function = getattr(worker, name)
        assert inspect.getdoc(function), f"{name} is undocumented"
        assert function.__annotations__.get("return") == "bool"
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert [worker.ready(), worker.heartbeat(), worker.status("x"), worker.extend_timeout(1.0)] == [False] * 4


def test_worker_api_sends_sd_notify_datagrams(monkeypatch, tmp_path):
    import socket

    from orchestrator import worker

    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert worker.ready() and worker.status("two\nlines") and worker.extend_timeout(1.5)
        assert [sock.recv(4096) for _ in range(3)] == [b"READY=1", b"STATUS=two lines",
                                                       b"EXTEND_TIMEOUT_USEC=1500000"]
