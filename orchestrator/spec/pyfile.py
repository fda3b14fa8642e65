"""Import a Python file under a given module name: how tree-file plugins (`plugins = ["x.py"]`) load.

Its own module, importing nothing but the standard library: a spawned worker uses it to
load its plugin file without the catalog (pluggy, metadata scans) that also uses it.
"""
from __future__ import annotations

import importlib.util
import sys
import types


def import_file(name: str, path: str) -> types.ModuleType:
    """The module at `path`, registered as `name` in sys.modules (removed again if it fails)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
