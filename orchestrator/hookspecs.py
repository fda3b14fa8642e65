"""The plugin API: markers and the documented hooks a plugin may implement.

This module is the reference for plugin authors; `tests/unit/test_public_api.py`
fails when a hook lacks a docstring.
"""
from __future__ import annotations

from typing import Callable, Dict

import pluggy

PROJECT = "orch"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

WorkerFn = Callable[..., object]


@hookspec
def orch_workers() -> Dict[str, WorkerFn]:
    """Return the workers this plugin provides, as ``{name: callable}``.

    Called once per process that loads the catalog: by ``orch validate``,
    ``orch plugins`` and ``orch up`` in the parent, and again inside each worker
    process started with ``start_method = "spawn"`` (so keep it cheap and free
    of side effects).

    A worker process calls ``callable(**args)`` with the node's ``args`` table.
    Returning means exit code 0; an exception prints its traceback (prefixed by
    the node path) and exits 1; ``SystemExit(n)`` exits ``n``. SIGTERM asks the
    worker to stop: the default action ends the process, or install a handler to
    finish the current record first; after the node's ``stop_timeout`` it is
    SIGKILLed.

    Names are global across plugins, so prefix them (``"myapp.consumer"``). Two
    plugins returning the same name is an error that names both. Returning
    anything but a dict of ``str`` to callables is an error that names the plugin.
    """
    raise NotImplementedError
