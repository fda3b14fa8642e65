"""What happened to a node of a running tree: the record `orch events` shows and plugins receive.

Part of the public API: a plugin implementing the ``orch_event`` hook (hookspecs.py)
gets one `Event` per state change, in order. The root writes the same records,
as JSON lines, to ``events.jsonl`` in the tree's log directory.
"""
from __future__ import annotations

import datetime
from typing import Any, Dict, Mapping, Optional

import attrs

#: Every value `Event.event` takes, with what it means.
KINDS: Mapping[str, str] = {
    "started": "a node's process started (pid set)",
    "ready": "a node became ready: a worker's READY=1, a supervisor's whole subtree up",
    "exited": "a node's process exited without orch asking (exit_code or signal set; reason "
              "set when orch ended it for ready_timeout, watchdog or memory_limit)",
    "restarting": "a failed node is being restarted",
    "backoff": "a node waits before its restart (it keeps failing soon after start, or cannot fork)",
    "gave_up": "a supervisor exceeded its restart intensity and stops (reason says why)",
    "stopping": "orch asked a node's process to stop",
    "stopped": "a node's process exited after orch asked it to, or will not be restarted",
    "held": "`orch stop` keeps a node stopped",
    "released": "`orch start` lets a held node run again",
    "reloaded": "a reload changed this node (reason lists what)",
    "orphan_stopped": "a process left behind below the tree was killed (pid set)",
    "log_error": "a node's output could not be written to its log file (reason says why)",
    "hook_error": "a plugin's orch_event hook raised (reason has the error)",
    "events_lost": "plugins' orch_event hooks did not keep up; reason says how many events they missed",
}


@attrs.frozen(kw_only=True)
class Event:
    """One state change of one node.

    `ts` is the wall-clock time (seconds since the epoch, UTC) when it happened;
    `path` is the node path ("" for the root). Fields that do not apply are None.
    `signal` is set instead of `exit_code` when the process was killed by a signal.
    """

    ts: float
    tree: str
    path: str
    event: str
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    restarts: Optional[int] = None
    reason: Optional[str] = None

    @property
    def time(self) -> datetime.datetime:
        """`ts` as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.ts, tz=datetime.timezone.utc)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object written to events.jsonl (`ts` as an RFC 3339 string)."""
        fields = attrs.asdict(self)
        fields["ts"] = rfc3339(self.ts)
        return fields

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        """Read back what `to_dict` wrote; ValueError when it is not such a record."""
        try:
            ts = data["ts"]
            seconds = parse_rfc3339(ts) if isinstance(ts, str) else float(ts)
            return cls(ts=seconds, tree=str(data["tree"]), path=str(data["path"]), event=str(data["event"]),
                       pid=_int_or_none(data.get("pid")), exit_code=_int_or_none(data.get("exit_code")),
                       signal=_int_or_none(data.get("signal")), restarts=_int_or_none(data.get("restarts")),
                       reason=None if data.get("reason") is None else str(data["reason"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not an orch event record: {error}") from None


def rfc3339(ts: float) -> str:
    """UTC with microseconds: ``2026-12-02T00:13:14.123456Z``."""
    stamp = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch from what `rfc3339` writes (a trailing Z or an offset); ValueError otherwise."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    stamp = datetime.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


def _int_or_none(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return int(value)
