"""Every bad tree file through the real CLI: `orch validate` and `orch up` exit 2 with located
problems, never a traceback, and `orch up` starts nothing.

Most files go through `orchestrator.cli.main` in this process (fast); a handful through a real
`python -m orchestrator` subprocess, so the path a user takes is covered too.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import psutil
import pytest

from orchestrator.cli import main as cli
from orchestrator.root import control
from orchestrator.testing import isolated_env, run_orch

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
# The corpus is written against test_corpus.py's fixed fake catalog. Against the bundled
# plugins this one is valid (the real `orch.exit` has a default for `code`), so the real
# CLI accepts it; it is checked to validate, and never `orch up`-ed.
VALID_WITH_BUNDLED_PLUGINS = {"args-missing-required.toml"}
CORPUS_FILES = sorted(path.name for path in CORPUS.glob("*.toml") if path.name not in VALID_WITH_BUNDLED_PLUGINS)


def _nested_tables(levels: int) -> str:
    parts = ['name = "deep"\n']
    for level in range(1, levels + 1):
        parts.append(f'[[{".".join(["children"] * level)}]]\nname = "l{level}"\n')
    parts.append('worker = "orch.sleep"\n')
    return "".join(parts)


def _nested_inline(levels: int) -> str:
    inner = '{ name = "leaf", worker = "orch.sleep" }'
    for level in range(levels, 0, -1):
        inner = f'{{ name = "l{level}", children = [{inner}] }}'
    return f'name = "deep"\nchildren = [{inner}]\n'


# Bad inputs the corpus does not hold as files (too big, or better generated).
GENERATED = {
    "ten-megabytes.toml": lambda: b"# padding\n" * 1_000_000,
    "random-bytes.toml": lambda: random.Random(7).randbytes(8192),
    "nul-in-string.toml": lambda: b'name = "a\x00b"\n[[children]]\nname = "w"\nworker = "orch.sleep"\n',
    "utf16.toml": lambda: 'name = "x"\n[[children]]\nname = "w"\nworker = "orch.sleep"\n'.encode("utf-16"),
    "arrays-100000-deep.toml": lambda: ('name = "deep"\nx = ' + "[" * 100_000 + "]" * 100_000 + "\n").encode(),
    "inline-tables-200-deep.toml": lambda: _nested_inline(200).encode(),
    "tables-200-deep.toml": lambda: _nested_tables(200).encode(),
    "a-directory.toml": None,  # a directory where the file should be
}
CASES = [f"corpus/{name}" for name in CORPUS_FILES] + [f"generated/{name}" for name in GENERATED]
# The real subprocess path, for a handful: a syntax error, bad bytes, deep nesting, a
# semantic error and a whole-file problem (size).
SUBPROCESS_CASES = ["corpus/syntax-unclosed-string.toml", "corpus/binary-junk.toml",
                    "corpus/nesting-100-levels.toml", "corpus/unknown-worker.toml",
                    "generated/ten-megabytes.toml"]


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("generated")
    for name, make in GENERATED.items():
        if make is None:
            (directory / name).mkdir()
        else:
            (directory / name).write_bytes(make())
    return directory


@pytest.fixture
def case_file(request, generated_dir, monkeypatch):
    """The file argument as a user would type it: corpus files relative to their folder."""
    kind, name = request.param.split("/", 1)
    if kind == "corpus":
        monkeypatch.chdir(CORPUS)
        return name
    return str(generated_dir / name)


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv(control.ENV_RUN_DIR, str(directory))
    monkeypatch.setenv("ORCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    return directory


def children_of_this_process() -> set:
    return {proc.pid for proc in psutil.Process().children(recursive=True)}


def assert_rejected(file: str, code: int, out: str, err: str, command: str) -> None:
    shown = f"orch {command} {file}"
    assert code == 2, f"{shown} exited {code}:\n{out}{err}"
    assert "Traceback" not in out + err, f"{shown} printed a traceback:\n{out}{err}"
    located = re.compile(rf"{re.escape(file)}:(\d+:)? \S")
    problems = [line for line in err.splitlines() if located.match(line)]
    assert problems, f"{shown}: no `FILE:LINE:` (or `FILE:`) line on stderr:\n{err}"
    others = [line for line in err.splitlines() if not located.match(line) and not line.startswith("orch: ")]
    assert others == [], f"{shown}: unlocated lines on stderr:\n{err}"
    if command == "up":
        assert "nothing was started" in err, err


def assert_started_nothing(file: str, run_dir: Path, before: set) -> None:
    new = children_of_this_process() - before
    assert new == set(), f"`orch up {file}` left child processes: {sorted(new)}"
    created = sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*"))
    assert created == [], f"`orch up {file}` created {created} under the run directory"


@pytest.mark.parametrize("case_file", CASES, indirect=True)
def test_bad_file_is_rejected_in_process(case_file, run_dir, capsys):
    before = children_of_this_process()
    code = cli.main(["validate", case_file])
    out, err = capsys.readouterr()
    assert_rejected(case_file, code, out, err, "validate")
    if code != 2:
        return  # never `orch up` a file that validated: it would start a tree in this process

    code = cli.main(["up", case_file])
    out, err = capsys.readouterr()
    assert_rejected(case_file, code, out, err, "up")
    assert_started_nothing(case_file, run_dir, before)


@pytest.mark.parametrize("case_file", SUBPROCESS_CASES, indirect=True)
def test_bad_file_is_rejected_by_the_orch_command(case_file, run_dir, tmp_path):
    env = isolated_env(tmp_path)
    assert env[control.ENV_RUN_DIR] == str(run_dir)
    before = children_of_this_process()
    for command in ("validate", "up"):
        result = run_orch(command, case_file, env=env, timeout=30)
        assert_rejected(case_file, result.returncode, result.stdout, result.stderr, command)
    assert_started_nothing(case_file, run_dir, before)


def test_every_corpus_file_is_covered(run_dir, capsys, monkeypatch):
    assert len(CORPUS_FILES) >= 30
    assert set(SUBPROCESS_CASES) <= set(CASES)
    monkeypatch.chdir(CORPUS)
    for name in sorted(VALID_WITH_BUNDLED_PLUGINS):  # if one turns invalid, move it back into CASES
        assert cli.main(["validate", name]) == 0, capsys.readouterr().err
