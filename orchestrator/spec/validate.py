"""Tree file -> frozen TreeSpec, or InvalidInput carrying every problem found."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import attrs

from orchestrator.spec import resolve
from orchestrator.spec import source
from orchestrator.errors import InvalidInput, Problem
from orchestrator.spec.resolve import CatalogLoader
from orchestrator.spec.source import KeyPath, SourceMap
from orchestrator.spec import environ
from orchestrator.spec import logconf
from orchestrator.spec import ray_keys
from orchestrator.spec.environ import ENV_KEYS, ProcessEnv
from orchestrator.spec.values import CHECKS, Bad, describe, did_you_mean, start_method
from orchestrator.spec.names import name_problem
from orchestrator.spec.model import (
    DEFAULT_BACKOFF,
    DEFAULT_INTENSITY,
    DEFAULT_READY,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_RESTART,
    DEFAULT_START_METHOD,
    DEFAULT_STRATEGY,
    DEFAULT_WATCHDOG,
    Backend,
    Backoff,
    Intensity,
    NodeSpec,
    StartMethod,
    TreeSpec,
)

MAX_DEPTH = 32

_MODULE = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")
_COMMON_KEYS = frozenset({"name", "restart", "daemon", "stop_timeout", "description", "backoff", "backoff_max",
                          "max_memory"}) | ENV_KEYS
_SUPERVISOR_ONLY = frozenset({"children", "strategy", "max_restarts", "within", "memory_check", "backend", "ray"})
_WORKER_ONLY = frozenset({"worker", "args", "replicas", "ready", "ready_timeout", "watchdog", "ray_options"})
_ROOT_ONLY = frozenset({"start_method", "plugins", "log"})
_ROOT_KEYS = _ROOT_ONLY | _SUPERVISOR_ONLY | {"name", "stop_timeout", "description"} | ENV_KEYS
_ALLOWED = {
    "root": _ROOT_KEYS,
    "supervisor": _COMMON_KEYS | _SUPERVISOR_ONLY,
    "worker": _COMMON_KEYS | _WORKER_ONLY,
    # Kind unknown (both or neither of worker/children): accept any child key so
    # the kind problem is reported once instead of as a cascade of key problems.
    None: _COMMON_KEYS | _SUPERVISOR_ONLY | _WORKER_ONLY,
}
_ALL_KEYS = _ROOT_KEYS | _ALLOWED[None]
_CHECKS = {**CHECKS, "ray": ray_keys.ray_settings, "ray_options": ray_keys.ray_options}



def load_tree(path: str, *, text: Optional[str] = None, shown: Optional[str] = None,
              catalog_loader: Optional[CatalogLoader] = None) -> TreeSpec:
    """Parse, validate and resolve workers of the tree file at `path`, or raise InvalidInput.

    `text` is the file's text when a client read it for us (the root never opens a
    client's path); `shown` is the name to report problems under (the path as the
    user typed it), while plugin files resolve relative to `path`.
    """
    data, smap = source.load_source(shown or path, text)
    validator = _Validator(shown or path, smap, source_path=path)
    spec = validator.tree(data)
    if validator.plugins_ok:
        resolve.check_workers(validator, resolve.default_loader(catalog_loader))
    validator.raise_if_any()
    assert spec is not None  # no problems means the tree was built
    return spec


def validate_document(data: Any, smap: SourceMap, file: str) -> TreeSpec:
    """Check the structure of a parsed tree file (no plugins loaded); raise InvalidInput."""
    validator = _Validator(file, smap)
    spec = validator.tree(data)
    validator.raise_if_any()
    assert spec is not None
    return spec



@attrs.frozen
class _At:
    """Where a node is: its key path in the document and its node path."""

    keys: KeyPath
    path: str
    depth: int
    process: ProcessEnv = attrs.Factory(ProcessEnv)  # what the node inherits (env, cwd, user)

    def child(self, index: int, data: Mapping[str, Any]) -> "_At":
        name = data.get("name")
        # A bad name cannot label the node, so fall back to its position.
        label = name if isinstance(name, str) and not name_problem(name) else f"children[{index}]"
        path = f"{self.path}/{label}" if self.path else label
        return _At(self.keys + ("children", index), path, self.depth + 1, self.process)


@attrs.frozen
class _WorkerUse:
    """A worker node whose `worker` and `args` are well formed, to resolve later."""

    at: _At
    worker: str
    args: Mapping[str, Any]


class _Validator:
    """Walks the document once, collecting problems and the worker uses."""

    def __init__(self, file: str, smap: SourceMap, source_path: Optional[str] = None) -> None:
        self.file = file
        self.smap = smap
        self.source_path = source_path or file
        self.base_dir = os.path.dirname(os.path.abspath(self.source_path))
        self.problems: List[Problem] = []
        self.uses: List[_WorkerUse] = []
        self.plugin_refs: Tuple[str, ...] = ()  # as written, same order as `plugins`
        self.plugins: Tuple[str, ...] = ()
        self.plugins_ok = True

    def add(self, keys: KeyPath, path: Optional[str], message: str) -> None:
        self.problems.append(Problem(self.file, self.smap.line(keys), path, message))

    def raise_if_any(self) -> None:
        if self.problems:
            # Stable sort: file order for the reader, check order within a line.
            raise InvalidInput(sorted(self.problems, key=lambda p: p.line or 0))

    def tree(self, data: Any) -> Optional[TreeSpec]:
        if not isinstance(data, dict):
            self.add((), None, f"the top level must be a table, got {describe(data)}")
            return None
        start_method = self.start_method(data)
        self.plugins = self._plugins(data)
        log_values = logconf.check_table(data.get("log", {}), lambda keys, message: self.add(keys, "", message))
        ray_keys.check_document(data, self.add)
        root = self._node(data, _At((), "", 0), "root")
        if root is None or self.problems:
            return None
        log = logconf.log_spec(log_values, root.name, self.base_dir)
        return TreeSpec(root.name, self.source_path, start_method, self.plugins, root, log)

    def start_method(self, data: Mapping[str, Any]) -> StartMethod:
        if "start_method" not in data:
            return DEFAULT_START_METHOD
        try:
            return start_method("start_method", data["start_method"])
        except Bad as bad:
            self.add(("start_method",), "", str(bad))
            return DEFAULT_START_METHOD

    def _plugins(self, data: Mapping[str, Any]) -> Tuple[str, ...]:
        refs = data.get("plugins", [])
        if not isinstance(refs, list):
            self.plugins_ok = False
            self.add(("plugins",), "", f"'plugins' must be an array of strings, got {describe(refs)}")
            return ()
        resolved = []
        self.plugin_refs = tuple(ref for ref in refs if isinstance(ref, str))
        for index, ref in enumerate(refs):
            try:
                resolved.append(self._plugin(ref))
            except Bad as bad:
                self.plugins_ok = False
                self.add(("plugins", index), "", str(bad))
        return tuple(resolved)

    def _plugin(self, ref: Any) -> str:
        if not isinstance(ref, str):
            raise Bad(f"each plugin must be a string, got {describe(ref)}")
        if ref.endswith(".py"):
            full = os.path.normpath(os.path.join(self.base_dir, ref))
            if not os.path.isfile(full):
                raise Bad(f"plugin file {ref!r} not found (looked for {full})")
            return full
        if not _MODULE.fullmatch(ref):
            raise Bad(f"plugin {ref!r} is neither an importable module name nor a .py file")
        return ref

    def _node(self, data: Mapping[str, Any], at: _At, kind: Optional[str]) -> Optional[NodeSpec]:
        before = len(self.problems)
        self._check_keys(data, at, kind)
        values = self._values(data, at, _ALLOWED[kind])
        at = self._process_env(data, at, kind)
        children = self._children(data, at) if _has_children(data, kind) else ()
        if kind == "worker" and "worker" in values and ("args" in values or "args" not in data):
            self.uses.append(_WorkerUse(at, values["worker"], values.get("args", {})))
        if len(self.problems) > before:
            return None
        limits = {key: values[key] for key in ("max_memory", "memory_check") if key in values}
        return attrs.evolve(_make_node(at.path, values, children), **at.process.fields(), **limits)

    def _process_env(self, data: Mapping[str, Any], at: _At, kind: Optional[str]) -> _At:
        """`at` carrying the node's effective env/cwd/user, which its children inherit."""
        def report(keys: KeyPath, message: str) -> None:
            self.add(at.keys + keys, at.path, message)

        process = environ.resolve(data, at.process, self.base_dir, report)
        if kind == "supervisor" and process.uid is not None and process.dropped_by is None:
            # A supervisor process switches user itself; its subtree cannot switch again.
            process = attrs.evolve(process, dropped_by=at.path)
        return attrs.evolve(at, process=process)

    def _check_keys(self, data: Mapping[str, Any], at: _At, kind: Optional[str]) -> None:
        allowed = _ALLOWED[kind]
        for key in data:
            if key not in allowed:
                self.add(at.keys + (key,), at.path, _key_message(str(key), kind, allowed))
        if "name" not in data:
            self.add(at.keys, at.path, "missing required key 'name'")

    def _values(self, data: Mapping[str, Any], at: _At, allowed: frozenset) -> Dict[str, Any]:
        values = {}
        for key, value in data.items():
            if key in allowed and key in _CHECKS:
                try:
                    values[key] = _CHECKS[key](key, value)
                except Bad as bad:
                    self.add(at.keys + (key,), at.path, str(bad))
        return values

    def _children(self, data: Mapping[str, Any], at: _At) -> Tuple[NodeSpec, ...]:
        items = data.get("children", [])
        keys = at.keys + ("children",)
        if not isinstance(items, list):
            message = f"'children' must be an array of tables ([[{_header(at)}]]), got {describe(items)}"
            self.add(keys, at.path, message)
        elif not items:
            self.add(keys, at.path, f"a supervisor needs at least one child: add [[{_header(at)}]] tables")
        elif at.depth + 1 > MAX_DEPTH:
            self._too_deep(items, at)
        else:
            return self._child_nodes(items, at)
        return ()

    def _child_nodes(self, items: List[Any], at: _At) -> Tuple[NodeSpec, ...]:
        nodes: List[NodeSpec] = []
        first_lines: Dict[str, Any] = {}
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                message = f"children[{index}] must be a table, got {describe(item)}"
                self.add(at.keys + ("children", index), at.path, message)
                continue
            child = at.child(index, item)
            self._check_duplicate(item, child, first_lines)
            self._check_reserved(item, child)
            node = self._node(item, child, self._kind(item, child))
            nodes += _instances(node) if node is not None else []
        return tuple(nodes)

    def _check_duplicate(self, item: Mapping[str, Any], at: _At, first_lines: Dict[str, Any]) -> None:
        name = item.get("name")
        if not isinstance(name, str):
            return
        if name in first_lines:
            first = first_lines[name]
            where = f"first used at line {first}" if first else "already used by a sibling"
            self.add(at.keys + ("name",), at.path, f"duplicate name {name!r} among siblings ({where})")
        else:
            first_lines[name] = self.smap.line(at.keys + ("name",))

    def _check_reserved(self, item: Mapping[str, Any], at: _At) -> None:
        name = item.get("name")
        problem = logconf.reserved_name_problem(name, at.depth) if isinstance(name, str) else None
        if problem:
            self.add(at.keys + ("name",), at.path, problem)

    def _kind(self, data: Mapping[str, Any], at: _At) -> Optional[str]:
        has_worker, has_children = "worker" in data, "children" in data
        if has_worker and has_children:
            self.add(at.keys, at.path, "a node is a worker ('worker') or a supervisor ('children'), not both")
        elif has_worker or has_children:
            return "worker" if has_worker else "supervisor"
        elif data.keys() & {"strategy", "max_restarts", "within"}:
            self.add(at.keys, at.path, f"a supervisor needs at least one child: add [[{_header(at)}]] tables")
        else:
            self.add(at.keys, at.path, "a node needs 'worker' (a worker) or 'children' (a supervisor)")
        return None

    def _too_deep(self, items: List[Any], at: _At) -> None:
        depth = at.depth + _levels_below(items)
        first = items[0] if isinstance(items[0], dict) else {}
        child = at.child(0, first)
        message = f"the tree is nested {depth} levels deep; at most {MAX_DEPTH} levels are allowed"
        self.add(child.keys, child.path, message)


def _has_children(data: Mapping[str, Any], kind: Optional[str]) -> bool:
    # Children of a node whose kind is in doubt are still checked, since their
    # problems are real; but an empty list there would only repeat the kind problem.
    if kind in ("root", "supervisor"):
        return True
    return kind is None and isinstance(data.get("children"), list) and bool(data["children"])


def _levels_below(items: List[Any]) -> int:
    """How many levels of children hang below a node (iterative: input may be deep)."""
    deepest, stack = 0, [(items, 1)]
    while stack:
        children, level = stack.pop()
        deepest = max(deepest, level)
        for child in children:
            if isinstance(child, dict) and isinstance(child.get("children"), list) and child["children"]:
                stack.append((child["children"], level + 1))
    return deepest


def _header(at: _At) -> str:
    """The `[[...]]` header that adds a child under the node at `at`."""
    return ".".join([key for key in at.keys if isinstance(key, str)] + ["children"])


def _make_node(path: str, values: Mapping[str, Any], children: Tuple[NodeSpec, ...]) -> NodeSpec:
    intensity = Intensity(
        max_restarts=values.get("max_restarts", DEFAULT_INTENSITY.max_restarts),
        within=values.get("within", DEFAULT_INTENSITY.within),
    )
    return NodeSpec(
        name=values["name"],
        path=path,
        worker=values.get("worker"),
        args=dict(values.get("args", {})),
        children=children,
        restart=values.get("restart", DEFAULT_RESTART),
        daemon=values.get("daemon", False),
        stop_timeout=values.get("stop_timeout"),
        strategy=values.get("strategy", DEFAULT_STRATEGY),
        intensity=intensity,
        replicas=values.get("replicas"),
        ready=values.get("ready", DEFAULT_READY),
        ready_timeout=values.get("ready_timeout", DEFAULT_READY_TIMEOUT),
        watchdog=values.get("watchdog", DEFAULT_WATCHDOG),
        backoff=Backoff(
            initial=values.get("backoff", DEFAULT_BACKOFF.initial),
            cap=values.get("backoff_max", DEFAULT_BACKOFF.cap),
        ),
        backend=values.get("backend", Backend.LOCAL),
        ray=dict(values.get("ray", {})),
        ray_options=dict(values.get("ray_options", {})),
    )


def _instances(node: NodeSpec) -> List[NodeSpec]:
    """A worker with `replicas = N` runs as N siblings `name#0` .. `name#N-1`.

    Expanding here makes replicas ordinary nodes: a reload that changes N adds or
    removes only the instances past the smaller count.
    """
    if node.replicas is None:
        return [node]
    return [attrs.evolve(node, name=f"{node.name}#{index}", path=f"{node.path}#{index}")
            for index in range(node.replicas)]


def _key_message(key: str, kind: Optional[str], allowed: frozenset) -> str:
    if key in _ALL_KEYS:
        return _misplaced(key, kind)
    hint = did_you_mean(key, allowed) or did_you_mean(key, _ALL_KEYS)
    if not hint:
        # `ray`/`ray_options` are left out: they are allowed only next to a Ray backend (ray_keys.py).
        hint = f" (allowed here: {', '.join(sorted(allowed - ray_keys.ONLY_WITH_RAY))})"
    return f"unknown key {key!r}{hint}"


def _misplaced(key: str, kind: Optional[str]) -> str:
    if key in _ROOT_ONLY:
        return f"{key!r} is root-only: set it at the top of the file, not on a child"
    if kind == "root" and key in _WORKER_ONLY:
        return f"{key!r} is not allowed on the root: the root is a supervisor; put workers in [[children]]"
    if kind == "root":
        return f"{key!r} does not apply to the root: nothing supervises it"
    if kind == "supervisor":
        return f"{key!r} is only for workers, and this node is a supervisor (it has 'children')"
    return f"{key!r} is only for supervisors, and this node is a worker (it has 'worker')"

