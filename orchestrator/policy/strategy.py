"""Pure restart decisions: whether a child restarts, and which siblings a restart takes along."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from orchestrator.spec.model import Restart, Strategy


def should_restart(restart: Restart, exitcode: int) -> bool:
    """OTP: permanent always, transient on abnormal exit, temporary never.

    `exitcode` is multiprocessing's: negative for death by a signal. Only exits
    the supervisor did not cause reach this function, so any signal is abnormal.
    """
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exitcode != 0
    return False


def plan_restart(order: Sequence[str], failed: str, strategy: Strategy) -> Tuple[List[str], List[str]]:
    """(siblings to stop, in reverse spec order; children to start, in spec order).

    The failed child is already dead, so it is never in the stop list; it always
    leads the start list's portion it belongs to.
    """
    if strategy is Strategy.ONE_FOR_ONE:
        affected = [failed]
    elif strategy is Strategy.ONE_FOR_ALL:
        affected = list(order)
    else:  # REST_FOR_ONE: the failed child and every sibling after it
        affected = list(order[order.index(failed):])
    to_stop = [name for name in reversed(affected) if name != failed]
    return to_stop, affected
