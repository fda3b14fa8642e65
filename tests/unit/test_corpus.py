"""Every broken tree file in tests/corpus is rejected with its expected message and line."""
from __future__ import annotations

import os
import pathlib
import re

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.spec.validate import load_tree
from tests.helpers import FakeCatalog

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "corpus"
EXPECTED_LINE = re.compile(r"(?P<file>[^:]+\.toml):(?P<line>\d+|-): (?P<text>.+)")


def ticker(interval=1.0, message="tick"):
    pass


def sleep():
    pass


def exit_with(code, after=0.0, message=""):
    pass


def fake_loader(plugins):
    """A fixed catalog so the corpus does not change when the bundled plugins do."""
    return FakeCatalog(demo_ticker=ticker, demo_sleep=sleep, orch_exit=exit_with)


def _expected():
    entries = {}
    for raw in (CORPUS / "expected.txt").read_text(encoding="utf-8").splitlines():
        if raw.strip() and not raw.startswith("#"):
            found = EXPECTED_LINE.fullmatch(raw)
            assert found, f"malformed line in expected.txt: {raw!r}"
            line = None if found["line"] == "-" else int(found["line"])
            entries[found["file"]] = (line, found["text"])
    return entries


EXPECTED = _expected()


def _rejections(path: str):
    with pytest.raises(InvalidInput) as caught:
        load_tree(path, catalog_loader=fake_loader)
    return caught.value.problems


def test_every_corpus_file_has_an_expectation_and_vice_versa():
    files = {path.name for path in CORPUS.glob("*.toml")}
    assert files == set(EXPECTED)
    assert len(files) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_is_rejected_with_message_at_line(name, monkeypatch):
    # Relative path, as a user would type it: messages must echo it unchanged.
    monkeypatch.chdir(CORPUS)
    line, text = EXPECTED[name]
    problems = _rejections(name)
    rendered = [str(problem) for problem in problems]
    matching = [p for p in problems if p.line == line and text in str(p)]
    assert matching, f"expected line {line} with {text!r}, got:\n" + "\n".join(rendered)
    assert all(r.startswith(f"{name}:") for r in rendered)


def test_ten_megabyte_file_is_rejected_before_parsing(tmp_path):
    big = tmp_path / "huge.toml"
    with open(big, "wb") as handle:
        handle.write(b"# padding\n" * 1_000_000)
    problems = _rejections(str(big))
    assert [p.message for p in problems] == ["tree file is 10.0 MB; a tree file may be at most 1 MiB"]


def test_file_just_over_the_limit_shows_bytes(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    (problem,) = _rejections(str(big))
    assert problem.message == "tree file is 1,048,577 bytes; a tree file may be at most 1 MiB"


def test_directory_is_rejected(tmp_path):
    (problem,) = _rejections(str(tmp_path))
    assert str(problem) == f"{tmp_path}: is a directory, not a tree file"


def test_missing_file_is_rejected(tmp_path):
    (problem,) = _rejections(str(tmp_path / "nope.toml"))
    assert problem.message == "no such file"


def test_path_with_nul_byte_is_rejected():
    (problem,) = _rejections("bad\0name.toml")
    assert problem.message == "cannot read the tree file: embedded null byte"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_rejected(tmp_path):
    locked = tmp_path / "locked.toml"
    locked.write_text('name = "x"\n')
    locked.chmod(0)
    (problem,) = _rejections(str(locked))
    assert "permission denied" in problem.message
