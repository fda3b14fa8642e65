"""The root's `[log]` table: its keys checked, and resolved to a LogSpec with an absolute dir."""
from __future__ import annotations

import os
import pwd
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from orchestrator.spec.model import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES, LogFormat, LogSpec
from orchestrator.spec.values import LOG_CHECKS, Bad, describe, did_you_mean

ENV_LOG_DIR = "ORCH_LOG_DIR"
# orch's own log file sits next to the top-level nodes' files, so no top-level node may take its name.
ORCH_LOG_NAME = "orch"

# (key path in the document, message)
Report = Callable[[Tuple[Any, ...], str], None]


def default_log_dir(tree_name: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """Where a tree's logs go when its file sets no `log.dir`; absolute.

    `$ORCH_LOG_DIR/<tree>`, else `$XDG_STATE_HOME/orch/<tree>`, else
    `~/.local/state/orch/<tree>`. The CLI calls this too, to find a stopped tree's logs.
    """
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_LOG_DIR, "")
    if chosen:
        return os.path.join(_absolute(chosen, env), tree_name)
    return os.path.join(_state_home(env), "orch", tree_name)


def _state_home(env: Mapping[str, str]) -> str:
    # The XDG base directory spec: a relative $XDG_STATE_HOME is invalid and must be ignored.
    state = env.get("XDG_STATE_HOME", "")
    if state and os.path.isabs(state):
        return os.path.normpath(state)
    return os.path.join(_home(env), ".local", "state")


def _home(env: Mapping[str, str]) -> str:
    """$HOME of `env`, else the password database's (os.path.expanduser reads only os.environ)."""
    home = env.get("HOME", "")
    if home:
        return os.path.abspath(home)
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid with no passwd entry (some containers): nowhere better to go
        return os.path.abspath(os.sep)


def _absolute(path: str, env: Mapping[str, str]) -> str:
    """`path` with a leading `~` expanded against `env`, made absolute against the cwd."""
    return os.path.abspath(_expand_home(path, env))


def _expand_home(path: str, env: Mapping[str, str]) -> str:
    # Only `~` and `~/...`: `~user` needs a passwd lookup nobody has asked for.
    if path == "~" or path.startswith("~" + os.sep):
        return _home(env) + path[1:]
    return path


def check_table(value: Any, report: Report) -> Dict[str, Any]:
    """The `[log]` keys that are well formed, by name; every problem goes to `report`."""
    if not isinstance(value, dict):
        report(("log",), f"'log' must be a table ([log] with dir, max_bytes, backups, format), "
                         f"got {describe(value)}")
        return {}
    values = {}
    for key, item in value.items():
        check = LOG_CHECKS.get(key)
        if check is None:
            report(("log", key), _unknown(str(key)))
            continue
        try:
            values[key] = check(f"log.{key}", item)
        except Bad as bad:
            report(("log", key), str(bad))
    return values


def _unknown(key: str) -> str:
    hint = did_you_mean(key, LOG_CHECKS) or f" (allowed in [log]: {', '.join(sorted(LOG_CHECKS))})"
    return f"unknown key 'log.{key}'{hint}"


def log_spec(values: Mapping[str, Any], tree_name: str, base_dir: str,
             environ: Optional[Mapping[str, str]] = None) -> LogSpec:
    """The resolved LogSpec of checked `values`; a relative `dir` is relative to `base_dir`."""
    written = values.get("dir")
    if written is None:
        directory = default_log_dir(tree_name, environ)
    else:
        # "~/logs" means the home directory, not a folder named "~" next to the tree file.
        env = os.environ if environ is None else environ
        directory = os.path.normpath(os.path.join(base_dir, _expand_home(written, env)))
    return LogSpec(
        dir=directory,
        max_bytes=values.get("max_bytes", DEFAULT_LOG_MAX_BYTES),
        backups=values.get("backups", DEFAULT_LOG_BACKUPS),
        format=values.get("format", LogFormat.TEXT),
    )


def reserved_name_problem(name: str, depth: int) -> Optional[str]:
    """Why a node named `name` at `depth` (1 = a child of the root) may not be, or None."""
    if depth == 1 and name == ORCH_LOG_NAME:
        return (f"the name {name!r} is reserved at the top level: orch writes its own log "
                f"to {ORCH_LOG_NAME}.log; rename the node")
    return None
