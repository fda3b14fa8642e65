"""The process environment keys `env`, `env_file`, `cwd`, `user`, `group`: checked and
resolved at validation, inherited down the tree, so a node's process only applies them."""
from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import attrs

from orchestrator.spec.values import describe

ENV_KEYS = frozenset({"env", "env_file", "cwd", "user", "group"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_FILE_MAX_BYTES = 1 << 20

# (key path below the node, message)
Report = Callable[[Tuple[Any, ...], str], None]


@attrs.frozen
class ProcessEnv:
    """A node's effective environment; `fields()` are the NodeSpec fields of the same names."""

    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: Optional[str] = None
    user: Optional[str] = None
    group: Optional[str] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    # Path of the nearest supervisor process (not the root, which keeps its ids)
    # that switched user: nothing below it can switch again.
    dropped_by: Optional[str] = None

    def fields(self) -> Dict[str, Any]:
        return {"env": dict(self.env), "cwd": self.cwd, "user": self.user, "group": self.group,
                "uid": self.uid, "gid": self.gid}


def resolve(data: Mapping[str, Any], inherited: ProcessEnv, base_dir: str, report: Report) -> ProcessEnv:
    """`inherited` with the node's own keys applied; problems go to `report`."""
    env = dict(inherited.env)
    if "env_file" in data:
        env.update(_env_file(data["env_file"], base_dir, report))
    if "env" in data:
        env.update(_env_table(data["env"], report))
    cwd = inherited.cwd
    if "cwd" in data:
        cwd = _cwd(data["cwd"], base_dir, report) or cwd
    resolved = attrs.evolve(inherited, env=env, cwd=cwd)
    if "user" in data or "group" in data:
        resolved = _identity(data, resolved, report)
    return resolved


def _env_table(value: Any, report: Report) -> Dict[str, str]:
    if not isinstance(value, dict):
        report(("env",), f"'env' must be a table of strings, e.g. env = {{ LOG_LEVEL = \"info\" }}, "
                         f"got {describe(value)}")
        return {}
    env = {}
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key):
            report(("env", key), f"env key {key!r} is not a valid environment variable name "
                                 "(letters, digits and '_', not starting with a digit)")
        elif not isinstance(item, str):
            shown = str(item).lower() if isinstance(item, bool) else str(item)
            hint = f'; quote it: {key} = "{shown}"' if isinstance(item, (bool, int, float)) else ""
            report(("env", key), f"env {key!r} must be a string, got {describe(item)}{hint}")
        else:
            env[key] = item
    return env


def _env_file(value: Any, base_dir: str, report: Report) -> Dict[str, str]:
    if not isinstance(value, str):
        report(("env_file",), f"'env_file' must be a string (a path relative to the tree file), "
                              f"got {describe(value)}")
        return {}
    full = os.path.normpath(os.path.join(base_dir, value))
    try:
        text = _read_regular(full)
    except ValueError as unreadable:
        report(("env_file",), f"env_file {value!r}: {unreadable} ({full})")
        return {}
    env, problems = parse_env_text(text)
    for problem in problems:
        report(("env_file",), f"env_file {value!r}: {problem}")
    return env


def _read_regular(path: str) -> str:
    """A small regular file's text, opened without blocking (a FIFO would hang open())."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        try:
            data = handle.read(ENV_FILE_MAX_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > ENV_FILE_MAX_BYTES:
        raise ValueError(f"larger than {ENV_FILE_MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None


def parse_env_text(text: str) -> Tuple[Dict[str, str], List[str]]:
    """`KEY=value` lines (`#` comments, blank lines, optional `export `, quotes stripped)."""
    env: Dict[str, str] = {}
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not ENV_NAME.fullmatch(key):
            problems.append(f"line {number}: expected KEY=value with a valid variable name, got {raw.strip()!r}")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env, problems


def _cwd(value: Any, base_dir: str, report: Report) -> Optional[str]:
    if not isinstance(value, str):
        report(("cwd",), f"'cwd' must be a string (a directory relative to the tree file), got {describe(value)}")
        return None
    full = os.path.normpath(os.path.join(base_dir, value))
    if not os.path.isdir(full):
        report(("cwd",), f"cwd {value!r} is not an existing directory (looked for {full})")
        return None
    return full


def _identity(data: Mapping[str, Any], inherited: ProcessEnv, report: Report) -> ProcessEnv:
    user, group = data.get("user"), data.get("group")
    bad = False
    for key, value in (("user", user), ("group", group)):
        if value is not None and (not isinstance(value, str) or not value):
            report((key,), f"{key!r} must be a {key} name, got {describe(value)}")
            bad = True
    if bad:
        return inherited
    if os.geteuid() != 0:
        key = "user" if user is not None else "group"
        report((key,), f"{key!r} needs orch to run as root to switch the node's {key}; "
                       f"it runs as uid {os.geteuid()}")
        return inherited
    try:
        entry = pwd.getpwnam(user) if user is not None else (
            pwd.getpwnam(inherited.user) if inherited.user is not None else None)
    except KeyError:
        report(("user",), f"unknown user {user!r}")
        return inherited
    if entry is None:
        report(("group",), "'group' needs 'user' on this node or an ancestor")
        return inherited
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            report(("group",), f"unknown group {group!r}")
            return inherited
    elif user is None:
        gid = inherited.gid if inherited.gid is not None else gid
    resolved = attrs.evolve(inherited, user=entry.pw_name, uid=entry.pw_uid, gid=gid,
                            group=group if group is not None else (inherited.group if user is None else None))
    if inherited.dropped_by is not None and (resolved.uid, resolved.gid) != (inherited.uid, inherited.gid):
        key = "user" if user is not None else "group"
        report((key,), f"cannot switch to {key} {data[key]!r} below supervisor "
                       f"{inherited.dropped_by!r}, which already runs as user {inherited.user!r} "
                       "(only root can switch users)")
        return inherited
    return resolved
