"""Crash-loop backoff: the first restart is immediate, then delays double up to the cap."""
import pytest

from orchestrator.policy.intensity import backoff_delay
from orchestrator.spec.model import Backoff


@pytest.mark.parametrize("quick_exits, expected", [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.4), (7, 5.0), (50, 5.0)])
def test_delay_doubles_up_to_the_cap(quick_exits, expected):
    assert backoff_delay(quick_exits, Backoff(initial=0.1, cap=5.0)) == pytest.approx(expected)


def test_zero_initial_disables_backoff():
    assert backoff_delay(10, Backoff(initial=0.0, cap=5.0)) == 0.0
