"""orch: a declarative process-tree orchestrator. Public API for plugin authors."""
from typing import TYPE_CHECKING, Any

from orchestrator.hookspecs import WorkerFn, hookimpl

if TYPE_CHECKING:
    from orchestrator.events import Event

__version__ = "0.1.0"  # the only copy: pyproject.toml reads it (tool.setuptools.dynamic)

__all__ = ["Event", "WorkerFn", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    # `Event` on first use: every node process imports this package, and a spawned
    # worker should not pay for attrs and datetime unless its plugin uses events.
    if name == "Event":
        from orchestrator.events import Event

        return Event
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
