"""orchestrator/ type-checks clean under mypy, configured in pyproject.toml ([tool.mypy]).

CI runs only the README's test command (.ci/run), so mypy runs from here; by hand,
`.venv/bin/mypy` reads the same configuration.
"""
from __future__ import annotations

from pathlib import Path

from mypy import api

REPO = Path(__file__).resolve().parents[2]


def test_mypy_finds_no_error(tmp_path: Path) -> None:
    # A fresh cache each run (a couple of seconds): nothing is written to the checkout.
    stdout, stderr, status = api.run([
        "--config-file", str(REPO / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "mypy_cache"),
        str(REPO / "orchestrator"),
    ])
    assert status == 0, f"mypy found problems:\n{stdout}{stderr}"
    assert "Success: no issues found" in stdout
