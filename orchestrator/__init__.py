"""orch: a declarative process-tree orchestrator. Public API for plugin authors."""
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.events import Event
    from orchestrator.hookspecs import WorkerFn, hookimpl

__version__ = "0.1.0"  # the only copy: pyproject.toml reads it (tool.setuptools.dynamic)

__all__ = ["Event", "WorkerFn", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    # On first use: every node process imports this package, and a spawned worker
    # should not pay for attrs and datetime unless its plugin uses events, nor for
    # pluggy (a spawned worker's plugin module gets a light `hookimpl`, engine/child.py).
    if name == "Event":
        from orchestrator.events import Event

        return Event
    if name in ("hookimpl", "WorkerFn"):
        from orchestrator import hookspecs

        value = getattr(hookspecs, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
