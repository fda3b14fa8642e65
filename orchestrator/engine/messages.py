"""What supervisors tell each other over their pipes, matched by type.

Up, forwarded unchanged by every supervisor on the way to the root: `NodeEvent`,
`Ready`, `GaveUp`, `Applied`. Down, each supervisor passing on what is for a node
below it: `ApplyCommand`, `RestartCommand`.

They are pickled on every hop (multiprocessing pipes) and sent on the restart
path, so they stay small frozen slotted records with no behaviour.
"""
from __future__ import annotations

from typing import Optional, Union

import attrs

from orchestrator.engine.states import NodeState
from orchestrator.spec.model import NodeSpec, TreeContext


@attrs.frozen
class NodeEvent:
    """A child changed state."""

    path: str
    pid: Optional[int]
    state: NodeState
    restarts: int
    started_at: Optional[float]  # wall clock, for display
    failures: int  # exits orch did not cause
    ready: bool = False  # up: a worker running (READY=1 sent, with `ready = "notify"`), a subtree up
    status: Optional[str] = None  # the worker's last sd_notify STATUS=


@attrs.frozen
class Ready:
    """A supervisor's subtree is up."""

    path: str


@attrs.frozen
class GaveUp:
    """A supervisor exceeded its intensity, or a child could not boot."""

    path: str
    reason: str


@attrs.frozen
class Applied:
    """A supervisor finished applying the spec of `generation`."""

    path: str
    generation: int


@attrs.frozen
class ApplyCommand:
    """Go to this spec (a reload, `orch stop`/`orch start`), touching only what changed."""

    node: NodeSpec
    tree: TreeContext
    generation: int


@attrs.frozen
class RestartCommand:
    """Restart the node at `path` (a supervisor restarts its subtree)."""

    path: str


UpMessage = Union[NodeEvent, Ready, GaveUp, Applied]
Command = Union[ApplyCommand, RestartCommand]
