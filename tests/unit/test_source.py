"""source.py: reading tree files safely and mapping key paths to lines."""
from __future__ import annotations

import random
import textwrap

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.spec.source import SourceMap, load_source, parse_source, scan_lines


def lines_of(text: str) -> SourceMap:
    return scan_lines(textwrap.dedent(text))


def leaf_paths(value, prefix=()):
    """Every key path in a parsed document (tables, arrays and their elements)."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from leaf_paths(child, prefix + (key,))


NESTED = """\
name = "demo"                # 1
[[children]]                 # 2
name = "ticker"              # 3
args = { interval = 1.0 }    # 4
[[children]]                 # 5
name = "pipeline"            # 6
  [[children.children]]      # 7
  name = "reader"            # 8
  [children.children.args]   # 9
  path = "/tmp/x"            # 10
  [[children.children]]      # 11
  name = "writer"            # 12
[[children]]                 # 13
name = "last"                # 14
"""


def test_array_of_tables_headers_index_the_last_parent_element():
    smap = lines_of(NESTED)
    assert smap.line(("children", 0)) == 2
    assert smap.line(("children", 1)) == 5
    assert smap.line(("children", 1, "children", 0)) == 7
    assert smap.line(("children", 1, "children", 1)) == 11
    assert smap.line(("children", 1, "children", 1, "name")) == 12
    assert smap.line(("children", 2, "name")) == 14


def test_table_headers_and_their_keys():
    smap = lines_of(NESTED)
    assert smap.line(("children", 1, "children", 0, "args")) == 9
    assert smap.line(("children", 1, "children", 0, "args", "path")) == 10


def test_inline_table_keys_map_to_their_line():
    smap = lines_of(NESTED)
    assert smap.line(("children", 0, "args")) == 4
    assert smap.line(("children", 0, "args", "interval")) == 4


def test_unknown_key_falls_back_to_closest_ancestor():
    smap = lines_of(NESTED)
    assert smap.line(("children", 1, "children", 0, "worker")) == 7
    assert smap.line(("children", 9, "name")) == 2  # the first [[children]]
    assert smap.line(("nowhere", "x")) == 1  # only the document is known
    assert SourceMap().line(("x",)) is None


def test_multiline_strings_and_arrays_are_skipped():
    smap = lines_of(
        '''\
        a = """
        [[children]]
        b = 1
        """
        c = \'\'\'
        d = 2\'\'\'\'
        e = [
          1,  # comment with ] and "
          { f = 2 },
          "g]",
        ]
        h = "x # not a comment"
        '''
    )
    assert smap.line(("a",)) == 1
    assert ("children",) not in smap.lines and ("b",) not in smap.lines and ("d",) not in smap.lines
    assert smap.line(("c",)) == 5
    assert smap.line(("e",)) == 7
    assert smap.line(("e", 1)) == 9
    assert smap.line(("e", 1, "f")) == 9
    assert smap.line(("h",)) == 12


def test_dotted_and_quoted_keys():
    smap = lines_of(
        """\
        [server]
        a.b = 1
        "quoted.key" = 2
        'lit' = 3
        "esc\\u0061ped" = 4
        [ "x" . y ]
        """
    )
    assert smap.line(("server", "a")) == 2
    assert smap.line(("server", "a", "b")) == 2
    assert smap.line(("server", "quoted.key")) == 3
    assert smap.line(("server", "lit")) == 4
    assert smap.line(("server", "escaped")) == 5
    assert smap.line(("x", "y")) == 6


def test_crlf_line_endings():
    smap = scan_lines('a = 1\r\n\r\n[t]\r\nb = "x"\r\n')
    assert smap.line(("t", "b")) == 4


TRICKY = [
    NESTED,
    'a = [[1, 2], [3, [4, {x = 5}]]]\nb = { c = { d = [ { e = 1 } ] } }\n',
    '[a.b.c]\nd = 1\n[a]\ne = 2\n[[a.f]]\ng = 1\n[[a.f]]\n[a.f.h]\ni = 1\n',
    'x = 1979-05-27 07:32:00Z\ny = 07:32:00\nz = +inf\nw = 0xdead_beef\nv = """a""""\nu = \'\'\'b\'\'\'\'\'\n',
    '"" = 1\n"a b" = 2\n[ "t" ]\n"" = 3\n',
    'a = """\\\n  line \\"quoted\\" """\nb = 2\n',
    "arr = [\n  # only a comment\n]\nt = {}\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_every_path_of_a_parsed_document_is_mapped(text):
    data, smap = parse_source(text, "t.toml")
    missing = [path for path in leaf_paths(data) if path not in smap.lines]
    assert missing == []


def test_scanner_never_raises_on_arbitrary_text():
    rng = random.Random(1234)
    alphabet = '[]{}="\'#.,\n\\ abc1'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        scan_lines(text)  # must terminate and not raise


def test_deeply_nested_value_is_skipped_without_recursion():
    text = "a = " + "[" * 5000 + "]" * 5000 + "\nb = 1\n"
    assert scan_lines(text).line(("b",)) == 2


def test_syntax_error_gives_line_and_message_without_position_suffix():
    with pytest.raises(InvalidInput) as caught:
        parse_source('a = 1\nb = "unterminated\n', "t.toml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.path) == ("t.toml", 2, None)
    assert problem.message.startswith("invalid TOML: Illegal character")
    assert "at line" not in problem.message


def test_syntax_error_at_end_of_document_uses_last_line():
    with pytest.raises(InvalidInput) as caught:
        parse_source("a = 1\nb = [1,\n", "t.toml")
    assert caught.value.problems[0].line == 2


def test_too_deep_for_tomllib_is_a_problem_not_a_recursion_error():
    with pytest.raises(InvalidInput) as caught:
        parse_source("a = " + "[" * 100_000 + "]" * 100_000, "t.toml")
    assert "nested too deeply" in caught.value.problems[0].message


def test_not_utf8_reports_byte_offset_and_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "ok"\ndescription = "café"\n'.encode("latin-1"))
    with pytest.raises(InvalidInput) as caught:
        load_source(str(path))
    (problem,) = caught.value.problems
    assert problem.line == 2
    assert problem.message == "not UTF-8 text: byte 0xe9 at offset 30 cannot be decoded"


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbfname = "ok"\n')
    data, smap = load_source(str(path))
    assert data == {"name": "ok"} and smap.line(("name",)) == 1


def test_exactly_one_mebibyte_is_allowed(tmp_path):
    path = tmp_path / "max.toml"
    path.write_bytes(b"#" * (1024 * 1024 - 1) + b"\n")
    assert load_source(str(path))[0] == {}


class _RandomToml:
    """Writes a random valid TOML document and remembers the line of every key it wrote."""

    SCALARS = ['1', '-2.5', 'true', '"s # ] }"', "'lit [['", '1979-05-27T07:32:00Z', '"""\n[[x]]\nk = 1\n"""',
               "'''\n# c\n'''", '[\n  1,\n  "]",\n]', '{ a = 1, b = { c = [2] } }', '[ { d = 1 }, { e = "x" } ]']

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.out: list = []
        self.expected: dict = {}
        self.serial = 0

    def line(self) -> int:
        return "".join(self.out).count("\n") + 1

    def key(self):
        self.serial += 1
        name = f"k{self.serial}"
        style = self.rng.choice(["{}", '"{}"', "'{}'", '"{}.dot"'])
        return style.format(name), style.format(name).strip("\"'")

    def emit(self, text: str, path) -> None:
        self.expected[path] = self.line()
        self.out.append(text + "\n")

    def table(self, header: tuple, path: tuple, depth: int) -> None:
        for _ in range(self.rng.randrange(4)):
            raw, key = self.key()
            self.emit(f"{raw} = {self.rng.choice(self.SCALARS)}  # note", path + (key,))
        for _ in range(self.rng.randrange(3 - depth) if depth < 3 else 0):
            raw, key = self.key()
            self.out.append("\n" * self.rng.randrange(2))
            self.emit(f"[{'.'.join(header + (raw,))}]", path + (key,))
            self.table(header + (raw,), path + (key,), depth + 1)
        for _ in range(self.rng.randrange(3 - depth) if depth < 3 else 0):
            raw, key = self.key()
            for index in range(self.rng.randrange(1, 3)):
                self.emit(f"[[{'.'.join(header + (raw,))}]]", path + (key, index))
                self.table(header + (raw,), path + (key, index), depth + 1)


@pytest.mark.parametrize("seed", range(40))
def test_random_documents_map_every_key_to_the_line_it_was_written_on(seed):
    writer = _RandomToml(seed)
    writer.table((), (), 0)
    data, smap = parse_source("".join(writer.out), "t.toml")
    assert {path: smap.lines.get(path) for path in writer.expected} == writer.expected
    assert [path for path in leaf_paths(data) if path not in smap.lines] == []
