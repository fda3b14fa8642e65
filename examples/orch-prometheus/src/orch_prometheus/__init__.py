"""orch-prometheus: Prometheus metrics for orch process trees, from the ``orch_event`` hook.

orch loads this module through the ``orch`` entry point (``prometheus = "orch_prometheus"``)
and pluggy registers the module itself as the plugin: ``orch_event`` below is its only hook.
It provides no workers.

Importing starts nothing (the tree's root, ``orch validate`` and ``orch plugins`` import it
too, and so does every worker process the catalog is loaded in). The first event, in the
hook process the root starts, creates the exporter and its HTTP server on
``ORCH_PROMETHEUS_HOST:ORCH_PROMETHEUS_PORT`` (default ``127.0.0.1:9464``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from orchestrator.hookspecs import hookimpl

if TYPE_CHECKING:  # types only: prometheus_client is imported on the first event
    from orchestrator.events import Event

    from orch_prometheus.exporter import Exporter

__version__ = "0.1.0"

# The one exporter of this process, created on the first event.
_exporter: Optional["Exporter"] = None


@hookimpl
def orch_event(event: "Event") -> None:
    """Count the event; on the first one, start serving metrics.

    Raises once, on the first event, when the server cannot start (the port is taken,
    say); orch reports that as a ``hook_error``. Later events are still counted.
    """
    global _exporter
    if _exporter is None:
        from orch_prometheus.exporter import Exporter

        _exporter = Exporter()
    _exporter.handle(event)
