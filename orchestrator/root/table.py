"""The root's state table: what it last heard of each node, kept current by the uplink."""
from __future__ import annotations

from typing import Optional

import attrs

from orchestrator.engine.messages import NodeEvent
from orchestrator.engine.states import NodeState


@attrs.frozen
class NodeRecord:
    """One node as its supervisor last reported it. The defaults are a node the root has
    heard nothing of yet: not started (children start depth first, one at a time)."""

    pid: Optional[int] = None
    state: NodeState = NodeState.PENDING
    restarts: int = 0
    started_at: Optional[float] = None  # wall clock, for display
    failures: int = 0  # exits orch did not cause
    ready: bool = False
    status: Optional[str] = None  # a worker's sd_notify STATUS=
    # A Ray worker: "ray", and where its actor runs (its pid is on that host, not below the root).
    backend: Optional[str] = None
    host: Optional[str] = None
    node_id: Optional[str] = None
    actor_id: Optional[str] = None

    @classmethod
    def of(cls, event: NodeEvent) -> NodeRecord:
        return cls(pid=event.pid, state=event.state, restarts=event.restarts, started_at=event.started_at,
                   failures=event.failures, ready=event.ready, status=event.status, backend=event.backend,
                   host=event.host, node_id=event.node_id, actor_id=event.actor_id)


NOT_STARTED = NodeRecord()
