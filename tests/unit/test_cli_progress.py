"""The progress line: drawn only on a terminal, redrawn in place, erased at the end, never disturbing."""
import io
import threading

import pytest

from orchestrator.cli import progress
from orchestrator.testing import wait_for

CLEAR = "\r\x1b[K"


class FakeTty(io.StringIO):
    """A terminal stand-in that several threads may write to."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def isatty(self):
        return True

    def write(self, text):
        with self.lock:
            return super().write(text)

    def text(self):
        with self.lock:
            return self.getvalue()


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    return FakeTty()


def test_drawn_only_on_a_terminal_and_never_for_json(terminal, monkeypatch):
    assert progress.enabled(out=terminal)
    assert not progress.enabled(as_json=True, out=terminal)
    assert not progress.enabled(out=io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not progress.enabled(out=terminal)


def test_off_a_terminal_the_sample_is_never_even_prepared():
    def factory():
        raise AssertionError("prepared on a pipe")

    with progress.showing(factory, out=io.StringIO()):
        pass


def test_the_line_is_redrawn_in_place_and_erased_at_the_end(terminal):
    counts = iter(range(1000))
    line = progress.Progress(lambda: f"orch: working: {next(counts)}/9 done", terminal, interval=0.01)
    with line:
        wait_for(lambda: terminal.text().count(CLEAR) >= 3, message="three redraws")
    output = terminal.text()
    assert output.startswith(CLEAR + "orch: working: 0/9 done (")
    assert output.endswith(CLEAR) and "\n" not in output
    assert "orch: working: 1/9 done (" in output


def test_a_failing_sample_keeps_the_last_line(terminal):
    calls = []

    def sample():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("the root went away")
        return "orch: first"

    with progress.Progress(sample, terminal, interval=0.01):
        wait_for(lambda: len(calls) >= 4, message="four samples")
    draws = [part for part in terminal.text().split(CLEAR) if part]
    assert len(draws) >= 3 and all(draw.startswith("orch: first (") for draw in draws)


def test_nothing_drawn_nothing_erased(terminal):
    with progress.Progress(lambda: "never shown", terminal, interval=60):
        pass
    assert terminal.text() == ""


def test_a_failing_preparation_leaves_the_command_alone(terminal):
    def factory():
        raise RuntimeError("tree not running")

    with progress.showing(factory, out=terminal):
        pass
    assert terminal.text() == ""


def test_a_line_is_cut_to_the_width_of_the_terminal():
    assert progress.fit("x" * 10, 80) == "x" * 10
    assert progress.fit("x" * 100, 40) == "x" * 36 + "..."
