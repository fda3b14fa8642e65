"""strategy.py: the restart decision table and the stop/start plan of each strategy."""
import itertools

import pytest

from orchestrator.engine.child import EXIT_BOOT_FAILED
from orchestrator.spec.model import Restart, Strategy
from orchestrator.policy.strategy import plan_restart, should_restart

# multiprocessing exit codes: negative for death by a signal the supervisor did not send
EXITS = {"exit 0": 0, "exit 1": 1, "SystemExit(3)": 3, "boot failed": EXIT_BOOT_FAILED,
         "SIGKILL": -9, "SIGTERM from outside": -15, "SIGSEGV": -11}


@pytest.mark.parametrize("reason, code", list(EXITS.items()), ids=list(EXITS))
@pytest.mark.parametrize("restart", list(Restart), ids=[r.value for r in Restart])
def test_should_restart(restart, reason, code):
    expected = {
        Restart.PERMANENT: True,
        Restart.TRANSIENT: code != 0,
        Restart.TEMPORARY: False,
    }[restart]
    assert should_restart(restart, code) is expected


ABC = ["a", "b", "c"]

# (strategy, failed) -> (stop, in reverse spec order; start, in spec order)
PLANS = {
    (Strategy.ONE_FOR_ONE, "a"): ([], ["a"]),
    (Strategy.ONE_FOR_ONE, "b"): ([], ["b"]),
    (Strategy.ONE_FOR_ONE, "c"): ([], ["c"]),
    (Strategy.ONE_FOR_ALL, "a"): (["c", "b"], ["a", "b", "c"]),
    (Strategy.ONE_FOR_ALL, "b"): (["c", "a"], ["a", "b", "c"]),
    (Strategy.ONE_FOR_ALL, "c"): (["b", "a"], ["a", "b", "c"]),
    (Strategy.REST_FOR_ONE, "a"): (["c", "b"], ["a", "b", "c"]),
    (Strategy.REST_FOR_ONE, "b"): (["c"], ["b", "c"]),
    (Strategy.REST_FOR_ONE, "c"): ([], ["c"]),
}


@pytest.mark.parametrize("strategy, failed", PLANS, ids=[f"{s.value}-{f}" for s, f in PLANS])
def test_plan_restart_table(strategy, failed):
    assert plan_restart(ABC, failed, strategy) == PLANS[strategy, failed]


@pytest.mark.parametrize("strategy", list(Strategy), ids=[s.value for s in Strategy])
def test_only_child(strategy):
    assert plan_restart(["only"], "only", strategy) == ([], ["only"])


ORDERS = [list("abcde"), ["web", "db"], ["z", "y", "x", "w"]]


@pytest.mark.parametrize("order, strategy", list(itertools.product(ORDERS, Strategy)))
def test_plan_laws(order, strategy):
    """For every child: the failed child is started, never stopped; stop is start reversed minus it."""
    for failed in order:
        stop, start = plan_restart(order, failed, strategy)
        assert failed in start and failed not in stop
        assert start == [name for name in order if name in start], "start in spec order"
        assert stop == [name for name in reversed(start) if name != failed], "stop in reverse spec order"
        untouched = [name for name in order if name not in start]
        if strategy is Strategy.ONE_FOR_ONE:
            assert start == [failed]
        elif strategy is Strategy.ONE_FOR_ALL:
            assert start == order
        else:
            index = order.index(failed)
            assert (untouched, start) == (order[:index], order[index:]), "rest_for_one splits the list"


@pytest.mark.parametrize("strategy", list(Strategy), ids=[s.value for s in Strategy])
def test_plan_does_not_mutate_its_input(strategy):
    """Callers pass a list (the supervisor, its children's names): the plan must neither change
    it nor hand it back as one of its own lists. A tuple could show neither, so this uses a list."""
    for failed in ABC:
        order = list(ABC)
        stop, start = plan_restart(order, failed, strategy)
        assert order == ABC
        stop.append("extra")
        start.append("extra")
        assert order == ABC, "the plan shares a list with its input"
