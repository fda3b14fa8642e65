"""Pure reload planning: compare two specs by node name, level by level (circus-style diff).

`plan_tree` lists every change (`orch diff`); `plan_reload` is what one supervisor
does to its own children, given which of them run now.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import attrs

from orchestrator.spec.model import NodeSpec

# Keys whose change needs a new process: the code it runs. Everything else is read
# by the supervisor when it acts (restart rule, stop budget, intensity...) and is
# applied in place, keeping the pid.
RESTART_KEYS: Tuple[str, ...] = ("worker", "args", "ready", "ready_timeout", "watchdog")  # sd_notify env is set at start
# A process's environment, directory and user cannot change in place either.
RESTART_KEYS += ("env", "cwd", "user", "group")
# A Ray supervisor's connection and its workers' actor options are fixed when they start.
RESTART_KEYS += ("backend", "ray", "ray_options")
# max_memory/memory_check: read by the supervisor at each memory check.
LIVE_KEYS = ("restart", "daemon", "stop_timeout", "backoff", "strategy", "intensity", "max_memory", "memory_check")
# `held` (orch stop/start) is live too, but it is the root's, not the file's: the
# root compares file specs for `orch diff`, and supervisors act on it (plan_reload).


@attrs.frozen
class LevelPlan:
    """What one supervisor does with its own children to go from old to new."""

    remove: Tuple[str, ...]  # names, in old spec order (stopped in reverse)
    replace: Tuple[str, ...]  # stopped and started again with the new spec
    add: Tuple[str, ...]  # names, in new spec order
    keep: Tuple[str, ...]  # same process; spec updated in place (maybe recursively)


def changed_keys(old: NodeSpec, new: NodeSpec) -> Tuple[str, ...]:
    """The node's own keys that differ (children are compared separately)."""
    keys = []
    if old.is_supervisor != new.is_supervisor:
        keys.append("kind")
    keys += [key for key in RESTART_KEYS + LIVE_KEYS if getattr(old, key) != getattr(new, key)]
    return tuple(word for key in keys for word in _file_words(key, old, new))


def _file_words(key: str, old: NodeSpec, new: NodeSpec) -> Tuple[str, ...]:
    """Name a change with the keys users write in the tree file."""
    if key == "intensity":
        pairs = (("max_restarts", "max_restarts"), ("within", "within"))
        return tuple(word for word, attr in pairs if getattr(old.intensity, attr) != getattr(new.intensity, attr))
    if key == "backoff":
        pairs = (("backoff", "initial"), ("backoff_max", "cap"))
        return tuple(word for word, attr in pairs if getattr(old.backoff, attr) != getattr(new.backoff, attr))
    return (key,)


def needs_new_process(old: NodeSpec, new: NodeSpec) -> bool:
    return old.is_supervisor != new.is_supervisor or any(
        getattr(old, key) != getattr(new, key) for key in RESTART_KEYS)


def plan_level(old: NodeSpec, new: NodeSpec) -> LevelPlan:
    return _diff_children(old.children, new.children)


def _diff_children(old: Sequence[NodeSpec], new: Sequence[NodeSpec]) -> LevelPlan:
    olds = {child.name: child for child in old}
    news = {child.name: child for child in new}
    remove = tuple(name for name in olds if name not in news)
    add = tuple(name for name in news if name not in olds)
    both = [name for name in news if name in olds]
    replace = tuple(name for name in both if needs_new_process(olds[name], news[name]))
    keep = tuple(name for name in both if name not in replace)
    return LevelPlan(remove=remove, replace=replace, add=add, keep=keep)


@attrs.frozen
class LiveChild:
    """What a supervisor knows of one of its children now, as `plan_reload` needs it."""

    spec: NodeSpec  # the spec it runs with (its `held` flag included)
    running: bool  # it has a process now


@attrs.frozen
class ReloadPlan:
    """What one supervisor does to its own children to go to a new spec.

    Every field holds child names. `stop` names current children and `start` new
    ones: a replaced name is in both, its old process stopped, a new one started.
    """

    keep: Tuple[str, ...]  # same slot and process; spec updated in place (new spec order)
    hold: Tuple[str, ...]  # kept, newly held (`orch stop`): stopped, not restarted
    release: Tuple[str, ...]  # kept, no longer held (`orch start`): started
    remove: Tuple[str, ...]  # gone from the spec (old spec order)
    replace: Tuple[str, ...]  # started again with the new spec (new spec order)
    add: Tuple[str, ...]  # new spec order
    retire: Tuple[str, ...]  # removed, then replaced, that run: stopped and reaped before we exit
    stop: Tuple[str, ...]  # removed, replaced and newly held that run, in reverse old spec order
    start: Tuple[str, ...]  # added, replaced and released, in new spec order
    send_down: Tuple[str, ...]  # running supervisors kept with a changed spec: each applies its part


def plan_reload(current: Sequence[LiveChild], new: NodeSpec) -> ReloadPlan:
    """Go from the `current` children to `new`'s, touching only what changed (see plan_level)."""
    level = _diff_children([child.spec for child in current], new.children)
    now = {child.spec.name: child for child in current}
    news = {child.name: child for child in new.children}
    hold = tuple(name for name in level.keep if news[name].held and not now[name].spec.held)
    release = tuple(name for name in level.keep if now[name].spec.held and not news[name].held)
    going = set(level.remove + level.replace)
    retire = tuple(name for name in level.remove + level.replace if now[name].running)
    stopping = going | set(hold)
    stop = tuple(child.spec.name for child in reversed(current)
                 if child.spec.name in stopping and child.running)
    fresh = set(level.add + level.replace + release)
    start = tuple(child.name for child in new.children if child.name in fresh)
    send_down = tuple(name for name in level.keep
                      if news[name].is_supervisor and now[name].running and news[name] != now[name].spec)
    return ReloadPlan(keep=level.keep, hold=hold, release=release, remove=level.remove,
                      replace=level.replace, add=level.add, retire=retire, stop=stop, start=start,
                      send_down=send_down)


@attrs.frozen
class Change:
    op: str  # add | remove | restart | update
    path: str
    keys: Tuple[str, ...] = ()


def plan_tree(old: NodeSpec, new: NodeSpec) -> Tuple[List[Change], int]:
    """Every change from `old` to `new`, depth first, and how many nodes stay untouched."""
    changes: List[Change] = []
    own = changed_keys(old, new)
    if own:
        changes.append(Change("update", new.path, own))
    unchanged = 0 if own else 1
    level = plan_level(old, new)
    olds: Dict[str, NodeSpec] = {child.name: child for child in old.children}
    for name in level.remove:
        changes.append(Change("remove", olds[name].path))
    for child in new.children:
        if child.name in level.add:
            changes.append(Change("add", child.path))
        elif child.name in level.replace:
            changes.append(Change("restart", child.path, changed_keys(olds[child.name], child)))
        else:
            below, count = plan_tree(olds[child.name], child)
            changes += below
            unchanged += count
    return changes, unchanged
