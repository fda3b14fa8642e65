"""What supervisors tell each other over their pipes, matched by type.

Up, forwarded unchanged by every supervisor on the way to the root: `NodeEvent`,
`Ready`, `GaveUp`, `Applied`, `Notice`, `LogLine`; `MemoryReport` goes one hop only. Down, each supervisor passing on what is for a node
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
    # What happened (an events.KINDS word), or None for a change only `orch tree` shows (a STATUS=).
    event: Optional[str] = None
    exit_code: Optional[int] = None  # multiprocessing's: negative for a death by signal
    reason: Optional[str] = None  # why orch ended it: "watchdog: ...", "memory_limit: ..."
    # A Ray worker (its supervisor has backend = "ray"): "ray", and where its actor runs.
    backend: Optional[str] = None
    host: Optional[str] = None
    node_id: Optional[str] = None
    actor_id: Optional[str] = None


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
class Notice:
    """Something happened to a node that is no state of its own: its process exited
    (the state follows once the restart is decided), its log could not be written."""

    path: str
    event: str  # an events.KINDS word
    reason: Optional[str]
    pid: Optional[int] = None
    exit_code: Optional[int] = None  # multiprocessing's: negative for a death by signal
    restarts: Optional[int] = None


@attrs.frozen
class LogLine:
    """One of orch's own messages, said by the supervisor of `path` (pid `pid`), for orch.log."""

    path: str
    pid: int
    text: str


@attrs.frozen
class MemoryReport:
    """A supervisor's subtree RSS in bytes (its workers' process groups and its children's
    reports), sent to its parent each memory check so no process is measured twice."""

    path: str
    rss: int


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


UpMessage = Union[NodeEvent, Ready, GaveUp, Applied, Notice, LogLine, MemoryReport]
Command = Union[ApplyCommand, RestartCommand]
