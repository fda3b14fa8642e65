"""validate.py: tree files become frozen specs, or every problem is reported at once."""
from __future__ import annotations

import os
import pathlib
import random
import textwrap

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.spec.source import SourceMap
from orchestrator.spec.logconf import default_log_dir
from orchestrator.spec.model import Intensity, LogSpec, NodeSpec, Restart, StartMethod, Strategy, TreeSpec
from orchestrator.spec.validate import MAX_DEPTH, load_tree, validate_document
from orchestrator.spec.values import FORKSERVER_REJECTED
from tests.helpers import FakeCatalog

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "corpus"


def ticker(interval=1.0, message="tick"):
    pass


def sleep():
    pass


def flexible(**anything):
    pass


def fake_loader(plugins):
    return FakeCatalog(demo_ticker=ticker, demo_sleep=sleep, demo_flexible=flexible)


def write(tmp_path, text: str, name: str = "tree.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems(path: str, loader=fake_loader):
    with pytest.raises(InvalidInput) as caught:
        load_tree(path, catalog_loader=loader)
    return [str(problem)[len(path) + 1 :] for problem in caught.value.problems]


FULL = """\
    name = "demo"
    start_method = "spawn"
    plugins = ["json", "local_plugin.py"]
    strategy = "one_for_all"
    max_restarts = 7
    within = 10
    stop_timeout = 30
    description = "a demo"

    [[children]]
    name = "ticker"
    worker = "demo.ticker"
    args = { interval = 0.5 }
    restart = "always"
    daemon = true
    stop_timeout = 2

    [[children]]
    name = "pipeline"
    strategy = "rest_for_one"
    restart = "never"
      [[children.children]]
      name = "reader"
      worker = "demo.sleep"
"""


def test_full_tree_becomes_the_expected_spec(tmp_path):
    (tmp_path / "local_plugin.py").write_text("")
    seen_plugins = []
    path = write(tmp_path, FULL)
    spec = load_tree(path, catalog_loader=lambda plugins: seen_plugins.append(plugins) or fake_loader(plugins))
    local = str(tmp_path / "local_plugin.py")
    reader = NodeSpec(name="reader", path="pipeline/reader", worker="demo.sleep")
    pipeline = NodeSpec(
        name="pipeline", path="pipeline", children=(reader,), restart=Restart.TEMPORARY,
        strategy=Strategy.REST_FOR_ONE,
    )
    ticker_node = NodeSpec(
        name="ticker", path="ticker", worker="demo.ticker", args={"interval": 0.5},
        restart=Restart.PERMANENT, daemon=True, stop_timeout=2.0,
    )
    root = NodeSpec(
        name="demo", path="", children=(ticker_node, pipeline), stop_timeout=30.0,
        strategy=Strategy.ONE_FOR_ALL, intensity=Intensity(max_restarts=7, within=10.0),
    )
    # Without a [log] table the logs go to the default place for the tree's name.
    log = LogSpec(dir=default_log_dir("demo"))
    assert spec == TreeSpec("demo", path, StartMethod.SPAWN, ("json", local), root, log)
    assert seen_plugins == [("json", local)]
    assert isinstance(spec.root.intensity.within, float)


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    spec = load_tree(write(tmp_path, 'name = "t"\n[[children]]\nname = "w"\nworker = "demo.sleep"\n'),
                     catalog_loader=fake_loader)
    assert spec.start_method is StartMethod.FORK and spec.plugins == ()
    (worker,) = spec.root.children
    assert worker == NodeSpec(name="w", path="w", worker="demo.sleep")


def test_py_plugins_resolve_against_the_tree_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text("")
    path = write(tmp_path / "sub", 'name = "t"\nplugins = ["mine.py"]\n[[children]]\nname = "w"\nworker = "demo.sleep"\n')
    monkeypatch.chdir(tmp_path)
    spec = load_tree(os.path.relpath(path), catalog_loader=fake_loader)
    assert spec.plugins == (str(tmp_path / "sub" / "mine.py"),)


def test_every_problem_is_reported_at_once_in_line_order(tmp_path):
    path = write(tmp_path, """\
        name = "bad name"
        start_method = "forkserver"
        [[children]]
        name = "a"
        worker = "demo.ticker"
        deamon = 1
        restart = "sometimes"
        [[children]]
        name = "a"
        worker = "demo.nope"
        args = { intervl = 1 }
        [[children]]
        worker = "demo.ticker"
        args = { intervl = 1 }
    """)
    assert problems(path) == [
        "1: (root): name 'bad name' may only use letters, digits, '_', '.' and '-'",
        "2: (root): " + FORKSERVER_REJECTED,
        "6: a: unknown key 'deamon'; did you mean 'daemon'?",
        "7: a: unknown restart \"sometimes\" (valid: \"always\", \"on-failure\", \"never\")",
        "9: a: duplicate name 'a' among siblings (first used at line 4)",
        "10: a: unknown worker 'demo.nope'; did you mean 'demo.sleep'? "
        "(known workers: demo.flexible, demo.sleep, demo.ticker)",
        "12: children[2]: missing required key 'name'",
        "14: children[2]: worker 'demo.ticker' does not accept argument 'intervl' "
        "(it takes: interval, message); did you mean 'interval'?",
    ]


def test_same_name_under_different_parents_is_fine(tmp_path):
    path = write(tmp_path, """\
        name = "t"
        [[children]]
        name = "a"
          [[children.children]]
          name = "x"
          worker = "demo.sleep"
        [[children]]
        name = "b"
          [[children.children]]
          name = "x"
          worker = "demo.sleep"
    """)
    spec = load_tree(path, catalog_loader=fake_loader)
    assert [node.path for node in spec.nodes()] == ["", "a", "a/x", "b", "b/x"]


def test_badly_named_node_is_located_by_index_under_its_parent(tmp_path):
    path = write(tmp_path, """\
        name = "t"
        [[children]]
        name = "pipe"
          [[children.children]]
          name = "ok"
          worker = "demo.sleep"
          [[children.children]]
          name = "not/ok"
          worker = "demo.sleep"
    """)
    assert problems(path) == ["8: pipe/children[1]: name 'not/ok' may only use letters, digits, '_', '.' and '-'"]


def nested_tree(levels: int) -> str:
    parts = ['name = "t"\n']
    for depth in range(1, levels + 1):
        parts.append(f"[[{'.'.join(['children'] * depth)}]]\nname = \"n{depth}\"\n")
    return "".join(parts) + 'worker = "demo.sleep"\n'


def test_nesting_up_to_the_limit_is_accepted(tmp_path):
    spec = load_tree(write(tmp_path, nested_tree(MAX_DEPTH)), catalog_loader=fake_loader)
    assert max(node.path.count("/") + 1 for node in spec.nodes() if node.path) == MAX_DEPTH


def test_nesting_beyond_the_limit_says_how_deep(tmp_path):
    (message,) = problems(write(tmp_path, nested_tree(MAX_DEPTH + 1)))
    assert message.endswith("n33: the tree is nested 33 levels deep; at most 32 levels are allowed")


def test_inline_nesting_far_too_deep_is_a_problem(tmp_path):
    inner = '{ name = "leaf", worker = "demo.sleep" }'
    for depth in range(400):
        inner = f'{{ name = "n{depth}", children = [{inner}] }}'
    path = write(tmp_path, f'name = "t"\nchildren = [{inner}]\n')
    with pytest.raises(InvalidInput):
        load_tree(path, catalog_loader=fake_loader)


def test_top_level_must_be_a_table():
    with pytest.raises(InvalidInput) as caught:
        validate_document(["not", "a", "table"], SourceMap(), "t.toml")
    assert str(caught.value) == "t.toml: the top level must be a table, got array"


def test_validate_document_checks_structure_without_plugins():
    spec = validate_document({"name": "t", "children": [{"name": "w", "worker": "anything"}]}, SourceMap(), "t")
    assert spec.root.children[0].worker == "anything"


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("stop_timeout", "true", "'stop_timeout' must be a number of seconds, got boolean true"),
        ("stop_timeout", "inf", "'stop_timeout' must be a finite number of seconds, got inf"),
        ("stop_timeout", "1979-05-27", "'stop_timeout' must be a number of seconds, got date 1979-05-27"),
        ("daemon", '"true"', "'daemon' must be true or false, got string \"true\""),
        ("restart", '"On-Failure"', "did you mean 'on-failure'?"),
        ("worker", '""', "'worker' must name a worker provided by a plugin, got an empty string"),
        ("args", "3", "'args' must be a table of keyword arguments, e.g. args = { interval = 1.0 }, got integer 3"),
        ("description", "1", "'description' must be a string, got integer 1"),
    ],
)
def test_wrong_values_on_a_worker(tmp_path, key, value, expected):
    body = {"name": '"w"', "worker": '"demo.flexible"', key: value}
    lines = "".join(f"{k} = {v}\n" for k, v in body.items())
    (message,) = problems(write(tmp_path, f'name = "t"\n[[children]]\n{lines}'))
    assert message.startswith(f"{3 + list(body).index(key)}: w: ") and expected in message


def test_huge_integer_is_a_problem_not_an_overflow():
    data = {"name": "t", "within": 10**400, "children": [{"name": "w", "worker": "x"}]}
    with pytest.raises(InvalidInput, match="'within' is too large"):
        validate_document(data, SourceMap(), "t")


# -- second phase: workers against the plugin catalog -------------------------


def one_worker(tmp_path, worker: str, args: str = "{}", plugins: str = "[]") -> str:
    return write(tmp_path, f"""\
        name = "t"
        plugins = {plugins}
        [[children]]
        name = "w"
        worker = "{worker}"
        args = {args}
    """)


def test_extra_keyword_arguments_are_fine_for_a_var_keyword_worker(tmp_path):
    spec = load_tree(one_worker(tmp_path, "demo.flexible", "{ anything = 1 }"), catalog_loader=fake_loader)
    assert spec.root.children[0].args == {"anything": 1}


def test_missing_required_argument_is_reported(tmp_path):
    def needs(path, mode="r"):
        pass

    (message,) = problems(one_worker(tmp_path, "x.needs"), loader=lambda p: FakeCatalog(x_needs=needs))
    assert message == (
        "6: w: worker 'x.needs' cannot be called with these args: "
        "missing a required argument: 'path' (it takes: path, mode)"
    )


def test_worker_without_a_signature_is_not_checked(tmp_path):
    class Opaque:
        @property
        def __signature__(self):
            raise ValueError("no signature")

        def __call__(self, *args, **kwargs):
            pass

    path = one_worker(tmp_path, "x.opaque", "{ whatever = 1 }")
    assert load_tree(path, catalog_loader=lambda p: FakeCatalog(x_opaque=Opaque())).root.children[0].worker == "x.opaque"


def test_no_workers_at_all_says_so(tmp_path):
    (message,) = problems(one_worker(tmp_path, "a.b"), loader=lambda p: FakeCatalog())
    assert message == "5: w: unknown worker 'a.b' (known workers: none (no plugin provides any))"


class PluginError(Exception):
    def __init__(self, problems):
        self.problems = problems
        super().__init__("plugin trouble")


def test_plugin_errors_are_reported_at_the_plugins_line(tmp_path):
    (tmp_path / "mine.py").write_text("")
    resolved = str(tmp_path / "mine.py")

    def loader(plugins):
        raise PluginError([(resolved, f"cannot load plugin {resolved!r}: boom"), (None, "entry point 'x' broke")])

    path = one_worker(tmp_path, "demo.sleep", plugins='[\n  "json",\n  "mine.py",\n]')
    assert problems(path, loader) == [
        "2: (root): entry point 'x' broke",
        f"4: (root): cannot load plugin {resolved!r}: boom",
    ]


def test_any_other_loader_failure_is_still_a_problem(tmp_path):
    def loader(plugins):
        raise RuntimeError("plugin module exploded")

    (message,) = problems(one_worker(tmp_path, "demo.sleep"), loader)
    assert message == "2: (root): could not load plugins: RuntimeError: plugin module exploded"


def test_broken_plugin_list_skips_worker_resolution(tmp_path):
    def loader(plugins):
        raise AssertionError("must not load plugins when the list itself is wrong")

    (message,) = problems(one_worker(tmp_path, "demo.sleep", plugins='["gone.py"]'), loader)
    assert "plugin file 'gone.py' not found" in message


def test_workers_are_resolved_even_when_other_nodes_are_broken(tmp_path):
    path = write(tmp_path, """\
        name = "t"
        [[children]]
        name = "broken"
        worker = "demo.sleep"
        restart = 3
        [[children]]
        name = "typo"
        worker = "demo.slep"
    """)
    assert [m.split(":")[0] for m in problems(path)] == ["5", "8"]


def test_default_loader_uses_the_bundled_plugins(tmp_path, monkeypatch):
    pytest.importorskip("orchestrator.spec.catalog")
    monkeypatch.setenv("ORCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    spec = load_tree(one_worker(tmp_path, "demo.ticker", "{ interval = 0.1 }"))
    assert spec.root.children[0].args == {"interval": 0.1}


# -- no input may produce anything but a TreeSpec or InvalidInput -------------


def _mutations(rng: random.Random, text: bytes):
    for _ in range(30):
        data = bytearray(text)
        for _ in range(rng.randrange(1, 6)):
            spot = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0 and data:
                del data[spot : spot + rng.randrange(1, 8)]
            elif action == 1:
                data[spot:spot] = rng.choice([b"[", b"]]", b"=", b'"', b"\n", b"{", b"children", b"\xff", b"."])
            else:
                data[spot:spot] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        yield bytes(data)


@pytest.mark.timeout(120)
def test_fuzzed_inputs_never_escape_as_other_exceptions(tmp_path):
    rng = random.Random(20240601)
    seeds = [path.read_bytes() for path in sorted(CORPUS.glob("*.toml"))] + [textwrap.dedent(FULL).encode()]
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(200))) for _ in range(100)]
    for seed in seeds:
        samples.extend(_mutations(rng, seed))
    target = tmp_path / "fuzz.toml"
    for sample in samples:
        target.write_bytes(sample)
        try:
            load_tree(str(target), catalog_loader=fake_loader)
        except InvalidInput as exc:
            assert exc.problems and all(str(problem) for problem in exc.problems)
