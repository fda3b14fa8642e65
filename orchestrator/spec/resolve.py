"""Second validation phase: resolve worker nodes against the plugin catalog."""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Sequence, Tuple

from orchestrator.spec.source import KeyPath
from orchestrator.spec.values import did_you_mean

if TYPE_CHECKING:  # types only: validate.py calls this module
    from orchestrator.spec.validate import _Validator, _WorkerUse

CatalogLoader = Callable[[Sequence[str]], Any]


def default_loader(loader: Optional[CatalogLoader]) -> CatalogLoader:
    if loader is not None:
        return loader
    from orchestrator.spec.catalog import load_catalog  # lazy: plugins import user code

    return load_catalog


def check_workers(validator: _Validator, loader: CatalogLoader) -> None:
    """Second phase: resolve each well-formed worker node against the plugin catalog."""
    try:
        catalog = loader(validator.plugins)
    except Exception as exc:  # plugin code is user input: never let it become a traceback
        _report_plugin_failure(validator, exc)
        return
    for use in validator.uses:
        _check_worker(validator, use, catalog.workers)


def _report_plugin_failure(validator: _Validator, exc: Exception) -> None:
    # Duck-typed on `.problems` (catalog.PluginError) so a fake loader needs no import.
    problems = getattr(exc, "problems", None)
    if not isinstance(problems, list):
        problems = [(None, f"could not load plugins: {type(exc).__name__}: {exc}")]
    for ref, message in problems:
        keys = _plugin_keys(validator, ref)
        text = message if ref is None or str(ref) in message else f"plugin {ref!r}: {message}"
        validator.add(keys, "", text)


def _plugin_keys(validator: _Validator, ref: Optional[str]) -> KeyPath:
    # Only called when every plugin resolved, so refs and resolved paths align.
    for index, names in enumerate(zip(validator.plugin_refs, validator.plugins)):
        if ref is not None and ref in names:
            return ("plugins", index)
    return ("plugins",)


def _check_worker(validator: _Validator, use: _WorkerUse, workers: Mapping[str, Any]) -> None:
    entry = workers.get(use.worker)
    keys = use.at.keys
    if entry is None:
        known = ", ".join(sorted(workers)) or "none (no plugin provides any)"
        hint = did_you_mean(use.worker, workers)
        validator.add(keys + ("worker",), use.at.path, f"unknown worker {use.worker!r}{hint} (known workers: {known})")
        return
    for arg, message in _bind_problems(use.worker, entry.function, use.args):
        validator.add(keys + ("args",) + ((arg,) if arg else ()), use.at.path, message)


def _bind_problems(worker: str, function: Any, args: Mapping[str, Any]) -> List[Tuple[Optional[str], str]]:
    """Why `function(**args)` would fail, as (offending arg or None, message) pairs."""
    try:
        signature = inspect.signature(function)
    except (ValueError, TypeError):
        return []  # builtins without a signature: nothing to check against
    except BaseException as error:  # noqa: B036 - a plugin's __signature__ is user code
        return [(None, f"worker {worker!r}: its signature cannot be read: {type(error).__name__}: {error}")]
    try:
        signature.bind(**args)
        return []
    except TypeError as exc:
        reason = str(exc)
    takes = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    listing = f"(it takes: {', '.join(takes)})" if takes else "(it takes no arguments)"
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [] if open_ended else [arg for arg in args if arg not in takes]
    if unknown:
        return [
            (arg, f"worker {worker!r} does not accept argument {arg!r} {listing}{did_you_mean(arg, takes)}")
            for arg in unknown
        ]
    return [(None, f"worker {worker!r} cannot be called with these args: {reason} {listing}")]
