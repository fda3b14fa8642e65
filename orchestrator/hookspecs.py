"""The plugin API: markers and the documented hooks a plugin may implement.

This module is the reference for plugin authors; `tests/unit/test_public_api.py`
fails when a hook lacks a docstring.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

import pluggy

if TYPE_CHECKING:  # a type only: loading the hooks must not import more than pluggy
    from orchestrator.events import Event

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


@hookspec
def orch_event(event: "Event") -> None:
    """Receive every event of the tree, in order (``orchestrator.events.Event``).

    Called in one process of its own, started by the tree's root: never inside
    a supervisor's loop and never in a process that forks, so a slow or
    blocking hook delays no restart and no stop. Events wait for a slow hook in
    a bounded queue; past it they are dropped, and an ``events_lost`` event
    (and a line in ``orch.log``) says how many. A hook that raises is reported
    as a ``hook_error`` event and in ``orch.log``; the next event is delivered
    as usual.

    The process may run threads (a metrics server, say): start them on the
    first call, not at import, since the root and ``orch validate`` import the
    plugin too. Entry-point plugins receive the events of every tree.

    Return value: ignored. See ``orchestrator.events.KINDS`` for every ``event.event``.
    """
