"""A supervisor's record of one child: its spec, its current process, and its restart history."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import attrs

from orchestrator.engine.loop import Timer
from orchestrator.engine.states import SETTLED, NodeState
from orchestrator.spec.model import NodeSpec, ReadyMode

if TYPE_CHECKING:  # a type only: the slot records a process, it never starts one
    from orchestrator.engine.spawn import Running


@attrs.define(eq=False)
class Slot:
    """A child of this supervisor and what we know about its current process."""

    spec: NodeSpec
    running: Optional[Running] = None
    started: float = 0.0  # when `running` started, by the supervisor's clock (uptime)
    state: NodeState = NodeState.STOPPED
    restarts: int = 0
    failures: int = 0  # exits orch did not cause, since this slot was created
    stop_requested: bool = False  # we signalled it, so its exit is not a failure
    ready: bool = False  # a supervisor child has reported its subtree up, a notify worker READY=1
    status: Optional[str] = None  # the worker's last sd_notify STATUS=
    deadline: float = 0.0  # ready_timeout or watchdog deadline (supervisor's clock), 0 = none
    deadline_reason: str = ""  # "ready_timeout" or "watchdog"
    deadline_timer: Optional[Timer] = None
    retry: Optional[Timer] = None
    start_failures: int = 0
    report: Optional[str] = None  # why a supervisor child last gave up
    quick_exits: int = 0  # consecutive exits soon after starting (crash-loop backoff)
    last_uptime: float = 0.0
    retired: bool = False  # replaced or removed by a reload: may finish stopping, never start
    kill_reason: Optional[str] = None  # orch ended the process for this (watchdog, memory_limit)

    @property
    def waits_for_ready(self) -> bool:
        """A supervisor reports Ready; a `ready = "notify"` worker sends READY=1."""
        return self.spec.is_supervisor or self.spec.ready is ReadyMode.NOTIFY

    @property
    def is_ready(self) -> bool:
        return self.running is not None and (self.ready or not self.waits_for_ready)

    @property
    def settled(self) -> bool:
        if self.running is None:
            return self.spec.held or self.state in SETTLED
        return self.ready or not self.waits_for_ready
