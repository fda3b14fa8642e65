"""Checkers for single tree-file values: each returns the typed value or raises Bad(message)."""
from __future__ import annotations

import datetime
import difflib
import math
import re
from typing import Any, Callable, Dict, Optional

from orchestrator.spec.model import Backend, LogFormat, ReadyMode, Restart, StartMethod, Strategy
from orchestrator.spec.names import name_problem


class Bad(Exception):
    """A value check failed; the message is the user-facing explanation."""


FORKSERVER_REJECTED = (
    'start_method "forkserver" is not supported: multiprocessing forks forkserver '
    "children from its server process, so their OS parent would not be their "
    'supervisor and parent-death guarantees would not hold; use "fork" or "spawn"'
)

def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


_TOML_TYPES = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime.datetime, "datetime"),
    (datetime.date, "date"),
    (datetime.time, "time"),
)


def describe(value: Any) -> str:
    """`string "5"`, `boolean true`, `array`: the TOML type and a short value."""
    kind = next((name for cls, name in _TOML_TYPES if isinstance(value, cls)), type(value).__name__)
    if isinstance(value, (list, dict)):
        return kind
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"{key!r} must be a string, got {describe(value)}")
    return value


def _name(key: str, value: Any) -> str:
    problem = name_problem(_string(key, value))
    if problem:
        raise Bad(problem)
    return value


def _worker(key: str, value: Any) -> str:
    if not _string(key, value).strip():
        raise Bad("'worker' must name a worker provided by a plugin, got an empty string")
    return value


def _table(key: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        message = f"{key!r} must be a table of keyword arguments, e.g. {key} = {{ interval = 1.0 }}"
        raise Bad(f"{message}, got {describe(value)}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"{key!r} must be true or false, got {describe(value)}")
    return value


def _seconds(key: str, value: Any) -> float:
    # bool is an int subclass in Python, but `true` is not a duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"{key!r} must be a number of seconds, got {describe(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise Bad(f"{key!r} is too large: {value}") from None
    if not math.isfinite(seconds):
        raise Bad(f"{key!r} must be a finite number of seconds, got {value}")
    return seconds


def _non_negative_seconds(key: str, value: Any) -> float:
    seconds = _seconds(key, value)
    if seconds < 0:
        raise Bad(f"{key!r} must be >= 0 seconds, got {value}")
    return seconds


def _within(key: str, value: Any) -> float:
    seconds = _seconds(key, value)
    if seconds <= 0:
        raise Bad(f"{key!r} must be > 0 seconds, got {value}")
    return seconds


def _max_restarts(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"{key!r} must be an integer, got {describe(value)}")
    if value < 0:
        raise Bad(f"{key!r} must be >= 0, got {value}")
    return value


def _replicas(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"{key!r} must be a whole number of instances, got {describe(value)}")
    if not 0 <= value <= 10000:
        raise Bad(f"{key!r} must be between 0 and 10000, got {value}")
    return value


_MEMORY = re.compile(r"(\d+)\s*(B|KB|MB|GB)?", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
LOG_MIN_BYTES = 1024
LOG_MAX_BACKUPS = 1000


def _size(key: str, value: Any) -> int:
    """Bytes: an integer, or a string such as "512KB", "10MB", "1GB" (powers of 1024).

    The one size parser; each key checks its own range on the result.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Bad(f'{key!r} must be a number of bytes or a string like "512MB", got {describe(value)}')
    if isinstance(value, str):
        match = _MEMORY.fullmatch(value.strip())
        if not match:
            raise Bad(f'{key!r} must be a size like "512KB", "10MB" or "1GB", got {describe(value)}')
        value = int(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]
    return value


def _memory(key: str, value: Any) -> int:
    size = _size(key, value)
    if size <= 0:
        raise Bad(f"{key!r} must be more than 0 bytes, got {size}")
    return size


def rotate_size(key: str, value: Any) -> int:
    """`log.max_bytes`: 0 never rotates; below 1KB a file would rotate on almost every line."""
    size = _size(key, value)
    if size != 0 and size < LOG_MIN_BYTES:
        shown = f'"{value}" ({size} bytes)' if isinstance(value, str) else str(value)
        raise Bad(f"{key!r} must be 0 (never rotate) or at least 1KB ({LOG_MIN_BYTES} bytes), got {shown}")
    return size


def backups(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"{key!r} must be a whole number of rotated files to keep, got {describe(value)}")
    if not 0 <= value <= LOG_MAX_BACKUPS:
        raise Bad(f"{key!r} must be between 0 and {LOG_MAX_BACKUPS}, got {value}")
    return value


def log_dir(key: str, value: Any) -> str:
    """A directory as written; logconf.py resolves it against the tree file."""
    if not isinstance(value, str):
        raise Bad(f"{key!r} must be a string (a directory relative to the tree file), got {describe(value)}")
    # "" would read as LogSpec's "no log files"; "." says "next to the tree file" plainly.
    if not value.strip():
        raise Bad(f'{key!r} must name a directory, got an empty string (use "." for the tree file\'s directory)')
    if "\0" in value:
        raise Bad(f"{key!r} must not contain a NUL character")
    return value


def _choice(enum_cls: Any) -> Callable[[str, Any], Any]:
    valid = [member.value for member in enum_cls]

    def check(key: str, value: Any) -> Any:
        listed = ", ".join(f'"{word}"' for word in valid)
        if not isinstance(value, str):
            raise Bad(f"{key!r} must be a string, one of {listed}; got {describe(value)}")
        if value not in valid:
            raise Bad(f'unknown {key} "{value}"{did_you_mean(value, valid)} (valid: {listed})')
        return enum_cls(value)

    return check


def start_method(key: str, value: Any) -> StartMethod:
    if value == "forkserver":
        raise Bad(FORKSERVER_REJECTED)
    return _choice(StartMethod)(key, value)


CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "name": _name,
    "description": _string,
    "worker": _worker,
    "args": _table,
    "restart": _choice(Restart),
    "daemon": _bool,
    "stop_timeout": _non_negative_seconds,
    "backoff": _non_negative_seconds,
    "replicas": _replicas,
    "backoff_max": _non_negative_seconds,
    "strategy": _choice(Strategy),
    "max_restarts": _max_restarts,
    "within": _within,
    "max_memory": _memory,
    "memory_check": _within,
    "ready": _choice(ReadyMode),
    "ready_timeout": _within,
    "watchdog": _non_negative_seconds,
    "backend": _choice(Backend),  # "ray": spec/ray_keys.py checks the `ray` and `ray_options` tables
}


# The keys of the root's `[log]` table (logconf.py walks the table, as validate.py does nodes).
LOG_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "dir": log_dir,
    "max_bytes": rotate_size,
    "backups": backups,
    "format": _choice(LogFormat),
}
