"""Frozen values describing a validated tree file; built only by `validate.py`."""
from __future__ import annotations

import enum
from typing import Any, Iterator, Mapping, Optional, Tuple

import attrs


class ReadyMode(enum.Enum):
    """When a worker counts as started: once its process runs, or on its sd_notify READY=1."""

    STARTED = "started"
    NOTIFY = "notify"


class LogFormat(enum.Enum):
    """How log records are written: readable lines, or one JSON object per line."""

    TEXT = "text"
    JSON = "json"


class StartMethod(enum.Enum):
    FORK = "fork"
    SPAWN = "spawn"


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Backend(enum.Enum):
    """Where a supervisor's workers run: processes it forks, or Ray actors it creates."""

    LOCAL = "local"
    RAY = "ray"


class Restart(enum.Enum):
    """OTP restart types; the values are the words users write in the tree file."""

    PERMANENT = "always"
    TRANSIENT = "on-failure"
    TEMPORARY = "never"


@attrs.frozen
class Intensity:
    """At most `max_restarts` restarts within `within` seconds (OTP intensity/period)."""

    max_restarts: int
    within: float


@attrs.frozen
class Backoff:
    """Delay before restarting a child that keeps crashing soon after it starts.

    The first restart is immediate; each further one while the child lives less
    than `cap` seconds waits `initial * 2**(n-1)`, at most `cap` seconds.
    """

    initial: float
    cap: float


# Defaults live here, next to the values they fill, so docs and code cannot drift.
DEFAULT_RESTART = Restart.TRANSIENT
DEFAULT_STRATEGY = Strategy.ONE_FOR_ONE
DEFAULT_INTENSITY = Intensity(max_restarts=3, within=5.0)
DEFAULT_STOP_TIMEOUT = 5.0
DEFAULT_BACKOFF = Backoff(initial=0.1, cap=5.0)
DEFAULT_START_METHOD = StartMethod.FORK
DEFAULT_MEMORY_CHECK = 5.0  # seconds between RSS checks of `max_memory` nodes
DEFAULT_READY = ReadyMode.STARTED
DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_WATCHDOG = 0.0  # off
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5
# Slack a supervisor gets on top of its children's stop budgets to unwind itself.
SUPERVISOR_STOP_SLACK = 1.0


@attrs.frozen
class NodeSpec:
    """One node: a worker (leaf, `worker` set) or a supervisor (`children` non-empty).

    `path` is the `/`-joined names below the root; the root's path is "".
    `args` is compared by value; nodes are never hashed, so a dict is fine here.
    """

    name: str
    path: str
    worker: Optional[str] = None
    args: Mapping[str, Any] = attrs.field(factory=dict)
    children: Tuple["NodeSpec", ...] = ()
    restart: Restart = DEFAULT_RESTART
    daemon: bool = False
    stop_timeout: Optional[float] = None
    strategy: Strategy = DEFAULT_STRATEGY
    intensity: Intensity = DEFAULT_INTENSITY
    backoff: Backoff = DEFAULT_BACKOFF
    replicas: Optional[int] = None  # set on each `name#i` instance of a replicated worker
    # The process environment, fully resolved along the path at validation, so a
    # node's process only applies it: `env` (tree-file keys merged root to node,
    # env_file under env), `cwd` (absolute), `user`/`group` names and their ids.
    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: Optional[str] = None
    user: Optional[str] = None
    group: Optional[str] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    max_memory: Optional[int] = None  # bytes of RSS (a supervisor: of its whole subtree)
    memory_check: float = DEFAULT_MEMORY_CHECK  # supervisors: seconds between checks of their children
    held: bool = False  # stopped by `orch stop`; set by the root, never by the file
    ready: ReadyMode = DEFAULT_READY  # workers: when the process counts as started
    ready_timeout: float = DEFAULT_READY_TIMEOUT  # seconds to send READY=1 (ready = "notify")
    watchdog: float = DEFAULT_WATCHDOG  # seconds between WATCHDOG=1 once ready; 0 = off
    # Ray (spec/ray_keys.py): a supervisor's `backend` and its `ray` connection settings;
    # a worker of a Ray supervisor has the `ray_options` its actor is created with.
    backend: Backend = Backend.LOCAL
    ray: Mapping[str, Any] = attrs.field(factory=dict)
    ray_options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def is_supervisor(self) -> bool:
        return self.worker is None

    @property
    def kind(self) -> str:
        return "supervisor" if self.is_supervisor else "worker"

    def stop_budget(self) -> float:
        """Seconds this node may take to stop before it is SIGKILLed.

        A supervisor stops its children one by one in reverse order, so its budget
        covers the sum of theirs (OTP gives supervisors `infinity` for the same
        reason): a flat timeout would kill it mid-way and orphan its grandchildren.
        """
        own = self.stop_timeout if self.stop_timeout is not None else 0.0
        if not self.is_supervisor:
            return self.stop_timeout if self.stop_timeout is not None else DEFAULT_STOP_TIMEOUT
        subtree = sum(child.stop_budget() for child in self.children) + SUPERVISOR_STOP_SLACK
        return max(own, subtree)

    def walk(self) -> Iterator["NodeSpec"]:
        """This node and its descendants, depth first in spec order."""
        yield self
        for child in self.children:
            yield from child.walk()


@attrs.frozen
class LogSpec:
    """The `[log]` table, resolved: where node logs, orch.log and events.jsonl go.

    `dir` is absolute; "" means no log files at all (unit tests' fake trees).
    `max_bytes` 0 never rotates; `backups` 0 keeps no rotated file.
    """

    dir: str = ""
    max_bytes: int = DEFAULT_LOG_MAX_BYTES
    backups: int = DEFAULT_LOG_BACKUPS
    format: LogFormat = LogFormat.TEXT


@attrs.frozen
class TreeSpec:
    """A whole validated tree file. `root` is the root supervisor (path "")."""

    name: str
    file: str
    start_method: StartMethod
    plugins: Tuple[str, ...]
    root: NodeSpec
    log: LogSpec = LogSpec()

    def nodes(self) -> Iterator[NodeSpec]:
        return self.root.walk()

    def with_holds(self, held: "frozenset[str]") -> "TreeSpec":
        """This tree with the nodes at `held` paths marked held (kept stopped)."""
        return attrs.evolve(self, root=_hold(self.root, held))

    def find(self, path: str) -> Optional[NodeSpec]:
        for node in self.nodes():
            if node.path == path:
                return node
        return None


def _hold(node: NodeSpec, held: "frozenset[str]") -> NodeSpec:
    children = tuple(_hold(child, held) for child in node.children)
    return attrs.evolve(node, children=children, held=node.path in held)


@attrs.frozen
class TreeContext:
    """What every process of a running tree needs besides its own subtree."""

    name: str
    start_method: StartMethod
    plugins: Tuple[str, ...]
    log: LogSpec = LogSpec()

    @classmethod
    def of(cls, tree: TreeSpec) -> "TreeContext":
        return cls(name=tree.name, start_method=tree.start_method, plugins=tree.plugins, log=tree.log)
