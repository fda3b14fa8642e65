"""The states a node is in, as supervisors report them and `orch tree` shows them.

The supervisors own these states (engine); the root's table and view and the CLI
read them. A member is a `str` equal to its value, so it goes into JSON, a pipe
or a comparison with a row read back from the control socket unchanged.
"""
from __future__ import annotations

import enum


class NodeState(str, enum.Enum):
    PENDING = "pending"  # not started yet: the root has heard nothing of it
    STARTING = "starting"  # a supervisor whose subtree is not up yet, a notify worker before READY=1
    RUNNING = "running"
    STOPPING = "stopping"  # signalled to stop, not yet reaped
    RESTARTING = "restarting"  # exited; its restart is decided or under way
    BACKOFF = "backoff"  # waiting out a delay before it is started again
    STOPPED = "stopped"
    FAILED = "failed"  # exited and will not be restarted
    MISSING = "missing"  # the view's only: a pid the root believes in but the OS does not have

    def __str__(self) -> str:
        # The value, as str() of a plain string would give, on every Python: a
        # (str, Enum) member formats as `NodeState.RUNNING` from 3.12 on otherwise.
        return self.value


# A child with no process that stays so by itself: its supervisor's subtree can be up.
SETTLED = frozenset({NodeState.STOPPED, NodeState.FAILED})
# A node with a process of its own; a supervisor in any other state took its subtree with it.
LIVE = frozenset({NodeState.STARTING, NodeState.RUNNING, NodeState.STOPPING})
# On its way somewhere: a wait for the tree to settle goes on while a node is in one.
TRANSITIONAL = frozenset({NodeState.PENDING, NodeState.STARTING, NodeState.STOPPING,
                          NodeState.RESTARTING, NodeState.MISSING})
# Where a node may rest after a reload without being reported as failing.
HEALTHY = frozenset({NodeState.RUNNING, NodeState.STOPPED})
