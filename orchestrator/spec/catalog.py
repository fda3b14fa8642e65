"""Plugin manager: bundled plugins, entry points and tree-file plugins -> worker catalog."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import types
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs
import pluggy

from orchestrator import hookspecs
from orchestrator.spec import entrypoints
from orchestrator.spec.pyfile import import_file

# Plugins shipped with orch, registered before anything else.
BUILTIN_PLUGINS = ("orch_plugins.demo", "orch_plugins.basic")
ENTRY_POINT_GROUP = "orch"
# Comma-separated plugin names to block (as `orch plugins` lists them).
ENV_BLOCK = "ORCH_DISABLE_PLUGINS"
# Set to 1 to skip installed entry-point plugins (our own tests do).
ENV_NO_AUTOLOAD = "ORCH_DISABLE_PLUGIN_AUTOLOAD"


@attrs.frozen
class WorkerEntry:
    name: str
    function: hookspecs.WorkerFn
    plugin: str


@attrs.frozen
class Catalog:
    workers: Mapping[str, WorkerEntry]
    plugins: Tuple[Tuple[str, Tuple[str, ...]], ...]  # (plugin name, its worker names)
    # (plugin name, its orch_event implementation), called one by one so a hook that
    # raises is reported by name and never keeps the event from the others.
    event_hooks: Tuple[Tuple[str, Callable[..., Any]], ...] = ()


# Where a worker's callable lives, for a spawned worker to import just that:
# (module name, qualified name, the file of a tree-file plugin or None).
WorkerRef = Tuple[str, str, Optional[str]]

# What went wrong while loading, each with the tree-file plugin ref it concerns, if any.
Problems = List[Tuple[Optional[str], str]]


class PluginError(Exception):
    """Plugins that could not be loaded; each problem names the tree-file ref if any."""

    def __init__(self, problems: Sequence[Tuple[Optional[str], str]]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(message for _, message in self.problems))


# Catalogs already loaded in this process. A forked child inherits them, so a
# worker finds its callable without importing plugins or scanning every installed
# package for entry points again (which cost ~50 ms per worker).
_LOADED: Dict[Tuple[str, ...], Catalog] = {}


def load_catalog(tree_plugins: Sequence[str] = ()) -> Catalog:
    """The worker catalog for these tree plugins, loaded once per process."""
    key = (os.environ.get(ENV_BLOCK, ""), os.environ.get(ENV_NO_AUTOLOAD, ""), *tree_plugins)
    if key not in _LOADED:
        _LOADED[key] = _load(tree_plugins)
    return _LOADED[key]


def worker_ref(tree_plugins: Sequence[str], worker: str) -> Optional[WorkerRef]:
    """Where worker `worker` of this catalog lives, if a fresh interpreter can import it
    from there alone (a module-level name of a module, or of a tree-file plugin); else None."""
    try:
        entry = load_catalog(tree_plugins).workers.get(worker)
    except PluginError:
        return None
    function = entry.function if entry is not None else None
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    module = sys.modules.get(module_name)
    if module is None or "<" in qualname or module_name == "__main__":
        return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not function:
        return None  # a name rebound since, a decorator's wrapper: let the catalog find it
    file = getattr(module, "__file__", None) if module_name.startswith(_TREE_PLUGIN_PREFIX) else None
    return module_name, qualname, file


def _load(tree_plugins: Sequence[str]) -> Catalog:
    """Load every plugin source and collect their workers, or raise PluginError."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for name in _blocked():
        manager.set_blocked(name)
    problems: Problems = []
    for module_name in BUILTIN_PLUGINS:
        _register(manager, importlib.import_module(module_name), module_name, problems)
    if os.environ.get(ENV_NO_AUTOLOAD) != "1":
        _load_entry_points(manager, problems)
    for ref in tree_plugins:
        _load_tree_plugin(manager, ref, problems)
    _check_hook_names(manager, problems)
    workers = _collect_workers(manager, problems)
    if problems:
        raise PluginError(problems)
    hooks = tuple((impl.plugin_name, impl.function) for impl in reversed(manager.hook.orch_event.get_hookimpls()))
    return Catalog(workers=workers, plugins=_listing(manager, workers), event_hooks=hooks)


def _blocked() -> List[str]:
    return [name.strip() for name in os.environ.get(ENV_BLOCK, "").split(",") if name.strip()]


def _register(manager: pluggy.PluginManager, plugin: object, name: str, problems: Problems,
              ref: Optional[str] = None) -> None:
    if manager.is_blocked(name):
        return
    _, failure = run_plugin_code(lambda: manager.register(plugin, name=name))
    if failure:
        problems.append((ref, f"plugin {name!r} is invalid: {failure}"))


def _load_entry_points(manager: pluggy.PluginManager, problems: Problems) -> None:
    # pluggy's own loader stops at the first broken package; load one by one so
    # a broken third-party plugin is reported by name next to everything else.
    for entry in entrypoints.entry_points(ENTRY_POINT_GROUP):
        if manager.is_blocked(entry.name):
            continue
        plugin, failure = run_plugin_code(entry.load)
        if failure:
            problems.append((None, f"entry point {entry.name!r} of package "
                                   f"{entry.distribution()!r} failed to load: {failure}"))
            continue
        _register(manager, plugin, entry.name, problems)


def _load_tree_plugin(manager: pluggy.PluginManager, ref: str, problems: Problems) -> None:
    module, failure = run_plugin_code(
        lambda: _import_path(ref) if ref.endswith(".py") else importlib.import_module(ref))
    if failure:
        problems.append((ref, f"cannot load plugin {ref!r}: {failure}"))
        return
    _register(manager, module, ref, problems, ref=ref)


# How much of what a failing plugin printed is quoted in its problem.
_QUOTED_OUTPUT = 300


def run_plugin_code(call: Callable[[], Any]) -> Tuple[Any, Optional[str]]:
    """Run plugin code (an import, a hook): (result, None), or (None, why it failed).

    Plugin code is user input running inside the root: whatever it raises, SystemExit
    from an argparse at import and KeyboardInterrupt included, becomes a problem
    report and never unwinds the caller. What it prints meanwhile is captured and
    quoted, so a usage text reads as that plugin failing, not as orch's own output.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            return call(), None
    except BaseException as error:  # noqa: B036 - see the docstring
        return None, _failure_text(error, printed.getvalue())


def _failure_text(error: BaseException, printed: str) -> str:
    if isinstance(error, SystemExit):
        text = f"it called sys.exit({error.code!r})"
    elif isinstance(error, KeyboardInterrupt):
        text = "it raised KeyboardInterrupt"
    else:
        text = f"{type(error).__name__}: {error}"
    printed = " ".join(printed.split())
    if printed:
        quoted = printed if len(printed) <= _QUOTED_OUTPUT else printed[:_QUOTED_OUTPUT] + "..."
        text += f"; it printed: {quoted}"
    return text


_TREE_PLUGIN_PREFIX = "orch_tree_plugin_"


def _import_path(path: str) -> types.ModuleType:
    """Import a plugin file once per process under a stable, path-derived name."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"{_TREE_PLUGIN_PREFIX}{stem}_{zlib.crc32(os.fsencode(path)):08x}"
    if name in sys.modules:
        return sys.modules[name]
    return import_file(name, path)


def _check_hook_names(manager: pluggy.PluginManager, problems: Problems) -> None:
    # A misspelt hook (`orch_worker`) would otherwise be ignored in silence.
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        name = manager.get_name(error.plugin) if error.plugin is not None else "?"
        problems.append((None, f"plugin {name!r}: {error}"))


def _collect_workers(manager: pluggy.PluginManager, problems: Problems) -> Dict[str, WorkerEntry]:
    # Call each implementation on its own so every worker is attributed to its
    # plugin and a duplicate can name both plugins.
    workers: Dict[str, WorkerEntry] = {}
    for impl in reversed(manager.hook.orch_workers.get_hookimpls()):
        name = impl.plugin_name  # the name it was registered under (manager.get_name)
        for entry in _plugin_workers(impl, name, problems):
            if entry.name in workers:
                problems.append((None, f"worker {entry.name!r} is provided by two plugins: "
                                       f"{workers[entry.name].plugin!r} and {name!r}; "
                                       "block one with ORCH_DISABLE_PLUGINS"))
                continue
            workers[entry.name] = entry
    return workers


def _plugin_workers(impl: pluggy.HookImpl, plugin_name: str, problems: Problems) -> List[WorkerEntry]:
    result, failure = run_plugin_code(impl.function)
    if failure:
        problems.append((None, f"plugin {plugin_name!r}: orch_workers() failed: {failure}"))
        return []
    if not isinstance(result, dict):
        problems.append((None, f"plugin {plugin_name!r}: orch_workers() must return a dict "
                               f"of name -> callable, got {type(result).__name__}"))
        return []
    entries = []
    for name, function in result.items():
        if not isinstance(name, str) or not callable(function):
            problems.append((None, f"plugin {plugin_name!r}: orch_workers() entry {name!r} "
                                   "must map a string name to a callable"))
            continue
        entries.append(WorkerEntry(name=name, function=function, plugin=plugin_name))
    return entries


def _listing(manager: pluggy.PluginManager,
             workers: Mapping[str, WorkerEntry]) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    rows = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None:
            continue
        rows.append((name, tuple(sorted(w.name for w in workers.values() if w.plugin == name))))
    return tuple(rows)
