"""intensity.py: the sliding restart window, driven with explicit monotonic times."""
import pytest

from orchestrator.policy.intensity import RestartWindow
from orchestrator.spec.model import Intensity


def window(max_restarts: int, within: float) -> RestartWindow:
    return RestartWindow(Intensity(max_restarts=max_restarts, within=within))


def test_allows_max_restarts_then_refuses_within_the_window():
    w = window(3, 5.0)
    assert [w.allow(t) for t in (100.0, 101.0, 102.0)] == [True, True, True]
    assert w.allow(103.0) is False, "a 4th restart within 5 s is one too many"


def test_restarts_older_than_the_window_are_forgotten():
    w = window(3, 5.0)
    assert all(w.allow(t) for t in (100.0, 101.0, 102.0))
    assert w.allow(105.5) is True, "the restart at 100 is more than 5 s old"
    assert w.recent() == 3
    assert w.allow(106.5) is True
    assert w.allow(107.0) is True
    assert w.allow(107.5) is False, "105.5, 106.5, 107.0 and 107.5 are within 5 s"


def test_zero_restarts_allowed_gives_up_on_the_first():
    assert window(0, 5.0).allow(0.0) is False


def test_one_restart_allowed():
    w = window(1, 10.0)
    assert w.allow(0.0) is True
    assert w.allow(9.0) is False


def test_slow_failures_never_give_up():
    w = window(1, 1.0)
    assert all(w.allow(float(t)) for t in range(0, 100, 2))
    assert w.recent() == 1


def test_recent_counts_restarts_in_the_window():
    w = window(5, 2.0)
    assert w.recent() == 0
    for t in (0.0, 0.5, 1.0):
        w.allow(t)
    assert w.recent() == 3
    w.allow(2.6)  # 0.0 and 0.5 fall out
    assert w.recent() == 2


@pytest.mark.parametrize("max_restarts", [1, 3, 10])
def test_a_burst_gives_up_exactly_after_max_restarts(max_restarts):
    w = window(max_restarts, 5.0)
    results = [w.allow(100.0 + i * 0.01) for i in range(max_restarts + 1)]
    assert results == [True] * max_restarts + [False]

