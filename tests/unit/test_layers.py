"""The package's layers, read from the source: imports point down, and no module imports itself back.

Layers, lowest first (see each ``orchestrator/*/__init__.py``): the top-level
``errors``, ``hookspecs`` and the package ``__init__``; then spec < policy < engine <
root < cli. A module may import its own layer and the ones below. Lazy imports
inside functions count: they run sooner or later, and they are how cycles hide.
``orchestrator.testing`` is a public pytest helper that drives a whole tree, so it
may import any layer (no layer may import it).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

BOTTOM = 0
LAYERS = {"spec": 1, "policy": 2, "engine": 3, "root": 4, "cli": 5}
EXEMPT = {"orchestrator.testing"}  # public helper: may import anything, nothing may import it
# `python -m orchestrator` is the CLI's entry point, so it sits with the CLI.
ENTRY_POINTS = {"orchestrator.__main__": LAYERS["cli"]}

Import = Tuple[str, int, bool]  # (imported module, line, whether it runs: not under TYPE_CHECKING)


def module_files() -> Dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve_relative(module: str, level: int, name: Optional[str]) -> str:
    """The absolute name of `from <dots><name> import ...` written in `module`."""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str) -> Iterator[Import]:
    """Every package module `module` imports, at module level or inside a function, with the
    line and whether the import runs (one under `if TYPE_CHECKING:` does not).

    `from orchestrator.root import control` names the submodule, not the package;
    names that are not submodules (`from orchestrator import __version__`) import
    the module they come from.
    """
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    type_only = typing_only_nodes(tree)
    for node in ast.walk(tree):
        runs = id(node) not in type_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "orchestrator":
                    yield alias.name, node.lineno, runs
        elif isinstance(node, ast.ImportFrom):
            source = (resolve_relative(module, node.level, node.module) if node.level
                      else node.module or "")
            if source.split(".")[0] != "orchestrator":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield (submodule if submodule in MODULES else source), node.lineno, runs


def typing_only_nodes(tree: ast.AST) -> Set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: such imports still point somewhere
    (so they obey the layers) but never run, so they cannot close an import cycle."""
    nodes: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return nodes


def layer_of(module: str) -> int:
    """0 for the top-level modules everything may use, else the layer's rank."""
    if module in ENTRY_POINTS:
        return ENTRY_POINTS[module]
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else BOTTOM


def layer_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "top level"


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports when it runs (module-level and lazy alike)."""
    return {module: {target for target, _, runs in imports_of(module) if runs and target in MODULES}
            for module in MODULES}


def cycles(graph: Dict[str, Set[str]]) -> List[Tuple[List[str], Set[str]]]:
    """(a cycle, its whole component) per strongly connected component of more than
    one module (or a self-import).

    Tarjan's algorithm finds the components; a walk inside each names a concrete
    cycle, so the message says which imports to cut.
    """
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph[module]:
                components.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [(cycle_within(graph, component), component) for component in components]


def cycle_within(graph: Dict[str, Set[str]], component: Set[str]) -> List[str]:
    """The shortest path m -> ... -> m inside one strongly connected component."""
    return min((cycle_through(graph, component, start) for start in component),
               key=lambda cycle: (len(cycle), cycle))


def cycle_through(graph: Dict[str, Set[str]], component: Set[str], start: str) -> List[str]:
    """The shortest path start -> ... -> start inside `component` (breadth first)."""
    came_from: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module] & component):
                if target == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return list(reversed(path)) + [start]
                if target not in came_from:
                    came_from[target] = module
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe(found: List[Tuple[List[str], Set[str]]]) -> str:
    """One line per cycle, naming the other modules caught in the same tangle."""
    rows = []
    for cycle, component in found:
        others = sorted(component - set(cycle))
        rows.append(" -> ".join(cycle) + (f" (tangled with it: {', '.join(others)})" if others else ""))
    return "\n".join(rows)


# ----- the rules ---------------------------------------------------------------


def test_every_layer_is_found():
    """Guard against a silent pass: the walk sees every layer and real imports."""
    found = {layer_name(module) for module in MODULES}
    assert found == set(LAYERS) | {"top level"}
    assert any(imports_of("orchestrator.engine.supervisor"))


def test_imports_point_down():
    violations = []
    for module in sorted(MODULES):
        if module in EXEMPT:
            continue
        for target, line, _ in imports_of(module):
            if target in EXEMPT:
                violations.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: "
                                  f"{module} imports {target}, a test helper no layer may use")
            elif layer_of(target) > layer_of(module):
                violations.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: "
                                  f"{module} ({layer_name(module)}) imports {target} "
                                  f"({layer_name(target)}), a layer above it")
    if violations:
        pytest.fail("imports against the layer order:\n" + "\n".join(violations), pytrace=False)


def test_no_import_cycle():
    """A lazy import inside a function closes a cycle as surely as one at the top."""
    found = cycles(import_graph())
    if found:
        pytest.fail("import cycles:\n" + describe(found), pytrace=False)


# ----- the checker itself --------------------------------------------------------


def test_cycles_finds_a_cycle_and_names_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(cycle for cycle, _ in cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_under_type_checking_never_run():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import orchestrator.root\n"
                     "import orchestrator.spec\n")
    type_only = typing_only_nodes(tree)
    imports = sorted((node for node in ast.walk(tree) if isinstance(node, ast.Import)), key=lambda n: n.lineno)
    assert [id(node) in type_only for node in imports] == [True, False]


def test_relative_imports_resolve_against_the_package():
    assert resolve_relative("orchestrator.engine.supervisor", 1, "spawn") == "orchestrator.engine.spawn"
    assert resolve_relative("orchestrator.engine.supervisor", 2, "spec.model") == "orchestrator.spec.model"
    assert resolve_relative("orchestrator.engine", 1, "loop") == "orchestrator.engine.loop"
