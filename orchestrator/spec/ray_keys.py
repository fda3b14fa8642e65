"""The Ray keys of a tree file: `backend`, `ray` (a supervisor's connection) and `ray_options`
(a worker's actor options), each value checked, and where they may appear.

Ray itself is never imported here: whether it is installed is asked of the import
system only (`importlib.util.find_spec`), so validating a tree stays cheap.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from orchestrator.spec.names import name_problem
from orchestrator.spec.values import Bad, describe, did_you_mean

INSTALL = "pip install 'orch[ray]'"
ADDRESS_FORMS = '"auto", "local", "ray://host:port" or "host:port"'
DEFAULT_START_TIMEOUT = 10.0  # seconds for a new actor to be placed and report its pid

# Keys that make sense only on or below a supervisor with backend = "ray".
ONLY_WITH_RAY = frozenset({"ray", "ray_options"})

# (key path below the document root, node path, message)
Report = Callable[[Tuple[Any, ...], str, str], None]


def ray_installed() -> bool:
    """Ray can be imported here (asked of the import system, never by importing it)."""
    return importlib.util.find_spec("ray") is not None


def _problems_to_bad(key: str, problems: List[str]) -> None:
    if problems:
        raise Bad("; ".join(f"{key}: {problem}" for problem in problems))


def _text(value: Any) -> Optional[str]:
    return None if isinstance(value, str) and value.strip() else f"must be a non-empty string, got {describe(value)}"


def _amount(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return f"must be a number >= 0, got {describe(value)}"
    return None


def _seconds(value: Any) -> Optional[str]:
    problem = _amount(value)
    return problem if problem or value > 0 else f"must be > 0 seconds, got {value}"


def _table(value: Any) -> Optional[str]:
    return None if isinstance(value, dict) else f"must be a table, got {describe(value)}"


def _address(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value.strip():
        return f"must be {ADDRESS_FORMS}; got {describe(value)}"
    if value in ("auto", "local") or value.startswith("ray://"):
        return None
    host, _, port = value.rpartition(":")
    if host and port.isdigit():
        return None
    return f"must be {ADDRESS_FORMS}; got {describe(value)}"


def _resources(value: Any) -> Optional[str]:
    if not isinstance(value, dict):
        return f"must be a table of custom resource amounts, e.g. {{ crawler_box = 1 }}, got {describe(value)}"
    bad = [f"{name!r} {_amount(amount)}" for name, amount in value.items() if _amount(amount)]
    reserved = [name for name in value if name in ("CPU", "GPU", "memory", "object_store_memory")]
    if reserved:
        bad.append(f"{', '.join(map(repr, reserved))}: use num_cpus, num_gpus or memory instead")
    return "; ".join(bad) or None


def _scheduling(value: Any) -> Optional[str]:
    return None if value in ("DEFAULT", "SPREAD") else f'must be "DEFAULT" or "SPREAD", got {describe(value)}'


def _memory(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return f"must be a number of bytes > 0, got {describe(value)}"
    return None


# The supervisor's `ray` table: how its process connects to a cluster.
SETTINGS: Dict[str, Callable[[Any], Optional[str]]] = {
    "address": _address,
    "namespace": _text,
    "runtime_env": _table,  # what every actor of this supervisor carries (working_dir, pip, env_vars...)
    "node_ip_address": _text,  # the address this driver uses (tests: 127.0.0.1)
    "start_timeout": _seconds,
    "num_cpus": _amount,  # address = "local" only: the CPUs the owned instance declares
}
_LOCAL_ONLY = ("num_cpus",)

# A worker's `ray_options`: what `.options()` of its actor gets.
OPTIONS: Dict[str, Callable[[Any], Optional[str]]] = {
    "num_cpus": _amount,
    "num_gpus": _amount,
    "memory": _memory,
    "resources": _resources,
    "accelerator_type": _text,
    "scheduling_strategy": _scheduling,
    "runtime_env": _table,
}
# Options orch sets itself or that would break its guarantees, with the reason.
REFUSED = {
    "max_restarts": "orch restarts the worker by its own rules (restart, strategy, intensity); "
                    "Ray's restarts would hide its deaths",
    "max_task_retries": "orch restarts the worker by its own rules; a retried run would hide a death",
    "lifetime": "a detached actor would outlive its supervisor; orch's actors die with it",
    "name": "orch names nothing on the cluster; the node path identifies the worker",
    "namespace": "set `namespace` in the supervisor's `ray` table",
    "get_if_exists": "every start creates a fresh actor",
    "max_concurrency": "orch sets it: the actor serves its output and signals while the worker runs",
    "concurrency_groups": "orch sets the actor's concurrency itself",
}


def _check_table(value: Any, checks: Mapping[str, Callable[[Any], Optional[str]]],
                 refused: Mapping[str, str]) -> List[str]:
    if not isinstance(value, dict):
        return [f"must be a table, got {describe(value)}"]
    problems = []
    for key, item in value.items():
        if key in refused:
            problems.append(f"{key!r} is not allowed: {refused[key]}")
        elif key not in checks:
            hint = did_you_mean(key, checks) or f" (allowed: {', '.join(sorted(checks))})"
            problems.append(f"unknown key {key!r}{hint}")
        else:
            problem = checks[key](item)
            if problem:
                problems.append(f"{key!r} {problem}")
    return problems


def ray_settings(key: str, value: Any) -> Dict[str, Any]:
    """The `ray` table of a supervisor: every problem in it, or its value."""
    problems = _check_table(value, SETTINGS, {})
    if not problems and value.get("address", "auto") != "local":
        problems += [f"{name!r} applies only to address = \"local\" (an instance this supervisor owns)"
                     for name in _LOCAL_ONLY if name in value]
    _problems_to_bad(key, problems)
    return dict(value)


def ray_options(key: str, value: Any) -> Dict[str, Any]:
    """A worker's `ray_options`: every problem in it, or its value."""
    _problems_to_bad(key, _check_table(value, OPTIONS, REFUSED))
    return dict(value)


# ----- where the keys may appear: one walk over the raw document ------------

# Worker keys a Ray actor cannot honour, with the reason.
_NOT_ON_RAY_WORKERS = {
    "user": "a Ray actor runs as the user of the Ray cluster, on whichever node fits",
    "group": "a Ray actor runs as the user of the Ray cluster, on whichever node fits",
    "cwd": "a Ray actor runs in its node's working directory; use ray.runtime_env.working_dir",
    "max_memory": "orch measures memory of local processes only; use ray_options.memory",
    "ready": "sd_notify does not reach across the cluster; a Ray worker is ready once its actor runs",
    "watchdog": "sd_notify does not reach across the cluster",
    "ready_timeout": "sd_notify does not reach across the cluster",
}
_NOT_ON_RAY_SUPERVISORS = {
    "user": "its workers run as the user of the Ray cluster, not this one",
    "group": "its workers run as the user of the Ray cluster, not this one",
    "cwd": "its workers run in their nodes' working directories; use ray.runtime_env.working_dir",
    "max_memory": "its workers' memory is on the cluster, which orch does not measure",
}


def check_document(data: Any, report: Report) -> None:
    """Report every Ray key in a place where it cannot work (the values are checked elsewhere)."""
    if not isinstance(data, dict):
        return
    if data.get("backend") == "ray":
        report(("backend",), "", 'backend = "ray" is for a [[children]] supervisor: the root forks the '
                                 "tree's processes, so it never imports Ray; put the Ray workers below a child")
    elif "ray" in data:
        report(("ray",), "", "'ray' applies only to a supervisor with backend = \"ray\"")
    _children(data, (), "", False, None, report)


def _children(data: Mapping[str, Any], keys: Tuple[Any, ...], path: str, ray_parent: bool,
              limited: Optional[str], report: Report) -> None:
    """`limited`: the path of the nearest ancestor with max_memory ("" the root), if any."""
    items = data.get("children")
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        label = name if isinstance(name, str) and not name_problem(name) else f"children[{index}]"
        at, child_path = keys + ("children", index), f"{path}/{label}" if path else label
        _node(item, at, child_path, ray_parent, limited, report)


def _node(item: Mapping[str, Any], at: Tuple[Any, ...], path: str, ray_parent: bool, limited: Optional[str],
          report: Report) -> None:
    is_ray = item.get("backend") == "ray"
    if is_ray and limited is not None:
        # A limited ancestor sums its subtree's RSS from local /proc; a Ray worker's pid is its host's.
        report(at + ("backend",), path, f"a Ray supervisor cannot be below {limited!r}, which has max_memory: "
                                        "orch measures local processes only; remove max_memory there "
                                        "(ray_options.memory limits an actor)")
    if ray_parent and "children" in item:
        report(at, path, "a Ray supervisor's children run as Ray actors, so they must be workers; "
                         "put this supervisor beside the Ray supervisor instead")
    if "ray" in item and not is_ray:
        report(at + ("ray",), path, "'ray' applies only to a supervisor with backend = \"ray\"")
    if "ray_options" in item and not ray_parent:
        report(at + ("ray_options",), path, "'ray_options' applies only to workers of a supervisor "
                                            "with backend = \"ray\"")
    if is_ray:
        _ray_supervisor(item, at, path, report)
    if ray_parent and "worker" in item:
        for key, why in _NOT_ON_RAY_WORKERS.items():
            if key in item and not (key == "ready" and item[key] == "started") \
                    and not (key == "watchdog" and item[key] == 0):
                report(at + (key,), path, f"{key!r} is not supported on a Ray worker: {why}")
    _children(item, at, path, is_ray, path if "max_memory" in item else limited, report)


def _ray_supervisor(item: Mapping[str, Any], at: Tuple[Any, ...], path: str, report: Report) -> None:
    if not ray_installed():
        report(at + ("backend",), path, f'backend = "ray" needs Ray, which is not installed here: {INSTALL}')
    for key, why in _NOT_ON_RAY_SUPERVISORS.items():
        if key in item:
            report(at + (key,), path, f"{key!r} is not supported on a Ray supervisor: {why}")
