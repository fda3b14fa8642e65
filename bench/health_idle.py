"""Idle CPU of orch (root + supervisors) at N workers, with `max_memory` on every node vs none.

    python3 bench/health_idle.py [--n 1000] [--seconds 20] [--check 5]

Starts each tree detached in a private run directory (root -> 10 supervisors -> N/10
`orch.sleep` workers, fork), lets it settle, then reads the CPU time of the root and
every supervisor with psutil over the window; prints CPU % of one core for each case.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import psutil

GROUPS = 10


def tree(name: str, n: int, limits: bool, check: float, supervisors: bool = True) -> str:
    lines = [f'name = "{name}"', f"memory_check = {check}" if limits else ""]
    for group in range(GROUPS):
        lines += ["[[children]]", f'name = "g{group}"']
        lines += ['max_memory = "100GB"'] if limits and supervisors else []
        lines += [f"memory_check = {check}"] if limits else []
        lines += ["  [[children.children]]", '  name = "w"', '  worker = "orch.sleep"',
                  f"  replicas = {n // GROUPS}"] + (['  max_memory = "1GB"'] if limits else [])
    return "\n".join(lines) + "\n"


def orch(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def cpu_seconds(procs: List[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def check_cost(nodes: List[dict], supervisors: bool, repeat: int = 20) -> float:
    """CPU seconds (user + system, of this process) the reads of one `memory_check` round take,
    done here the way each supervisor does them (memory_guard.py): a supervisor reads its limited
    workers' process groups, and, when its own node is limited (it reports its subtree up), all its
    workers' groups and its own; a limited supervisor child is judged on its report, not re-read.
    Each supervisor's reader keeps its leaders' /proc files open between rounds, so the first
    round (which opens them) is left out. CPU time, not wall time, so other load on the machine
    does not inflate it."""
    from orchestrator.engine.memory import GroupReader
    from orchestrator.engine.osproc import ensure_fd_limit

    ensure_fd_limit(4 * len(nodes) + 256)  # two open files per group, as in the supervisors
    rounds = []
    for sup in (node for node in nodes if node["kind"] == "supervisor"):
        reports = supervisors and sup["path"] != ""  # the root has no limit; every g<i> has one here
        below = [node for node in nodes if node["kind"] in ("worker", "supervisor") and node["pid"]
                 and node["parent"] == sup["path"]]
        groups: Dict[int, object] = {child["pid"]: child["path"] for child in below if child["kind"] == "worker"}
        if reports:
            groups[sup["pid"]] = sup["path"]
        if groups:
            rounds.append((GroupReader(), groups, {child["pid"] for child in below}))
    for reader, groups, skip in rounds:
        reader.rss(groups, skip)
    start = time.process_time()
    for _ in range(repeat):
        for reader, groups, skip in rounds:
            reader.rss(groups, skip)
    spent = (time.process_time() - start) / repeat
    for reader, _, _ in rounds:
        reader.close()
    return spent


def measure(n: int, limits: bool, seconds: float, check: float, supervisors: bool = True) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, ORCH_RUN_DIR=tmp)
        name = ("idle-limits" if supervisors else "idle-workers") if limits else "idle-plain"
        file = Path(tmp) / "tree.toml"
        file.write_text(tree(name, n, limits, check, supervisors))
        started = orch(env, "up", str(file), "--detach")
        if started.returncode != 0:
            raise SystemExit(f"orch up failed: {started.stdout}{started.stderr}")
        try:
            nodes = json.loads(orch(env, "tree", "--json", name).stdout)
            pids = [node["pid"] for node in nodes if node["kind"] == "supervisor" and node["pid"]]
            procs = [psutil.Process(pid) for pid in pids]
            time.sleep(2.0)  # settle after bring-up
            before, at = cpu_seconds(procs), time.monotonic()
            time.sleep(seconds)
            used, elapsed = cpu_seconds(procs) - before, time.monotonic() - at
            if limits:
                cost = check_cost(nodes, supervisors)
                print(f"  one check round of every supervisor: {cost * 1000:.1f} ms of CPU, "
                      f"{100 * cost / check:.3f}% of a core at memory_check = {check:g}")
            return 100.0 * used / elapsed
        finally:
            orch(env, "down", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--check", type=float, default=5.0)
    args = parser.parse_args()
    cases = ((False, True, "no max_memory"),
             (True, True, f"max_memory on every node, memory_check = {args.check:g}"),
             (True, False, f"max_memory on every worker only, memory_check = {args.check:g}"))
    for limits, supervisors, label in cases:
        percent = measure(args.n, limits, args.seconds, args.check, supervisors)
        print(f"N={args.n} {label}: orch (root + {GROUPS} supervisors) idle CPU {percent:.3f}% of a core")


if __name__ == "__main__":
    main()
