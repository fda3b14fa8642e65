"""Process titles: `ps` shows which node a process is, and leftovers of a tree can be found by it."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, AbstractSet, Callable, Iterator, Optional, cast

from orchestrator.engine.osproc import cmdline

if TYPE_CHECKING:  # psutil only where claimants() runs (the root): every node process imports us
    import psutil


def _load_set_title() -> Optional[Callable[[str], None]]:
    """setproctitle's C function. Its package's `__init__` imports `logging` (to log a missing C
    module), about 5 ms in every spawned worker, so the C module is loaded on its own when it
    can be (registered under its usual name: a later `import setproctitle` uses it); the
    package as usual otherwise. None without setproctitle: titles are skipped."""
    try:
        import importlib.machinery
        import importlib.util

        name = "setproctitle._setproctitle"
        module = sys.modules.get(name)
        if module is None:
            package = importlib.util.find_spec("setproctitle")
            folder = (package.submodule_search_locations or [""])[0] if package else ""
            found = [os.path.join(folder, entry) for entry in os.listdir(folder) if entry.startswith("_setproctitle")
                     and entry.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
            loader = importlib.machinery.ExtensionFileLoader(name, found[0])
            spec = importlib.util.spec_from_file_location(name, found[0], loader=loader)
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            sys.modules[name] = module
        return cast(Callable[[str], None], module.setproctitle)
    except Exception:  # noqa: BLE001 - any surprise: the ordinary import below
        pass
    try:  # setproctitle rewrites argv so `ps` shows the title
        from setproctitle import setproctitle

        return setproctitle
    except ImportError:  # pragma: no cover - setproctitle is a dependency; this is graceful decline
        return None


_set_title = _load_set_title()

PREFIX = "orch: "


def node_title(tree: str, path: str) -> str:
    return f"{PREFIX}{tree}/{path}" if path else f"{PREFIX}{tree} (root)"


def set_node_title(tree: str, path: str) -> None:
    if _set_title is not None:
        _set_title(node_title(tree, path))


def set_guardian_title(tree: str) -> None:
    """Title the process above the root (orchestrator/guardian.py). It is not a node and
    never outlives its root, so `claimants` leaves it out: it is never a leftover."""
    if _set_title is not None:
        _set_title(f"{PREFIX}{tree} (guardian)")


def claimants(tree: str, skip: AbstractSet[int] = frozenset()) -> Iterator[psutil.Process]:
    """Processes whose title says they belong to `tree`, except the pids in `skip`.

    The root does this every 30 s, so with a tree of thousands it must stay cheap: it
    skips the pids it knows as its own nodes without reading anything of them, reads the
    others' /proc/PID/cmdline directly, and makes psutil objects of the matches only.
    """
    node_prefix = f"{PREFIX}{tree}/"
    root_title = node_title(tree, "")
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        # psutil splits a rewritten argv on spaces, so compare the joined line.
        title = cmdline(name)
        if title.startswith(node_prefix) or title == root_title:
            import psutil  # only now: 2 MB the root would otherwise carry into every fork

            try:
                yield psutil.Process(int(name))
            except psutil.Error:
                continue

