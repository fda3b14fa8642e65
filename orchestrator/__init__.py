"""orch: a declarative process-tree orchestrator. Public API for plugin authors."""
from orchestrator.hookspecs import WorkerFn, hookimpl

__version__ = "0.1.0"  # the only copy: pyproject.toml reads it (tool.setuptools.dynamic)

__all__ = ["WorkerFn", "__version__", "hookimpl"]
