"""The measurements: each figure is one function over a running contender (a manager and its ProcTable)."""
from __future__ import annotations

import functools
import os
import random
import select
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import psutil

from contenders import Launch
from proctable import ProcTable, all_pids, read_cmdline, read_stat

POLL = 0.001  # seconds between scans; stretched to the scan's own cost so we never take a whole core


class Failed(Exception):
    """This contender could not do what the figure needs (did not come up, did not restart...)."""


@dataclass
class Manager:
    """A started contender: its manager process, the leaf view of its tree, where it logs."""

    launch: Launch
    process: subprocess.Popen
    table: ProcTable
    log: Path

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise Failed(f"the manager exited with code {code}; see {self.log}")


def wait_until(fact: Callable[[], object], t0: float, timeout: float, what: str,
               manager: Optional[Manager] = None) -> float:
    """Scan until `fact()` is truthy; seconds from `t0` to the end of the scan that saw it."""
    while True:
        started = time.monotonic()
        if fact():
            return time.monotonic() - t0
        if manager is not None:
            manager.check_alive()
        if started - t0 > timeout:
            raise Failed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(max(POLL, time.monotonic() - started))


def wait_gone(pids: Iterable[int], t0: float, timeout: float) -> float:
    """Seconds from `t0` until the last of `pids` has exited (pidfds: exact, no polling)."""
    alive, last = wait_exits(pids, t0, timeout)
    if alive:
        raise Failed(f"{alive} leaves still alive {timeout:g}s after the stop")
    return last - t0


def wait_exits(pids: Iterable[int], t0: float, timeout: float, quiet: float = float("inf")) -> Tuple[int, float]:
    """Wait until every one of `pids` has exited, none has for `quiet` seconds, or `timeout`
    seconds from `t0` have passed; returns how many are alive and when the last one exited."""
    poller, fds = select.poll(), set()
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        fds.add(fd)
        poller.register(fd, select.POLLIN)
    last = time.monotonic()
    try:
        while fds:
            remaining = min(t0 + timeout, last + quiet) - time.monotonic()
            ready = poller.poll(max(0, remaining) * 1000)
            if not ready:
                break
            last = time.monotonic()
            for fd, _ in ready:
                poller.unregister(fd)
                os.close(fd)
                fds.discard(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return len(fds), last


# ----- the figures ------------------------------------------------------------


def bring_up(launch: Launch, n: int, log: Path, timeout: float) -> tuple:
    """Start the manager; seconds until all n leaves are alive."""
    with open(log, "wb") as out:
        t0 = time.monotonic()
        process = subprocess.Popen(launch.argv, env=launch.env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=functools.partial(set_oom_score, 1000))
    manager = Manager(launch, process, ProcTable(process.pid, launch.is_leaf), log)
    seconds = wait_until(lambda: len(manager.table.scan().leaves) >= n, t0, timeout,
                         f"{n} leaves to be alive", manager)
    return manager, seconds


def set_oom_score(adj: int) -> None:
    """This process's standing with the kernel's OOM killer: the harness protects itself
    (-1000, run.prepare_process) and makes each contender the first choice (1000, set in
    the contender's process before exec), so a size that outgrows the machine costs that
    contender its run, not the harness its samples. Unwritable /proc (not root, for -1000):
    the memory guard (run.memory_reason) alone protects the run."""
    try:
        with open("/proc/self/oom_score_adj", "w") as file:
            file.write(str(adj))
    except OSError:
        pass


def restart_latencies(manager: Manager, kills: int, rng: random.Random, timeout: float,
                      budget: float) -> List[float]:
    """SIGKILL one random leaf at a time; seconds until a new leaf pid is alive.

    Stops early once `budget` seconds are spent (circus restarts on a 5 s tick).
    """
    samples: List[float] = []
    deadline = time.monotonic() + budget
    while len(samples) < kills and (not samples or time.monotonic() < deadline):
        time.sleep(rng.uniform(0.02, 0.1))  # a random phase against any periodic loop
        before = set(manager.table.scan().leaves)
        victim = rng.choice(sorted(before))
        samples.append(_one_restart(manager, victim, before, timeout))
    return samples


def _one_restart(manager: Manager, victim: int, before: Set[int], timeout: float) -> float:
    """Watch only the pids handed out since the kill (ns_last_pid), at a 0.2 ms interval:
    far cheaper and finer than listing /proc, which costs ~1.5 ms with 1000 processes."""
    parent = manager.table.ppid(victim)
    last = _last_pid()
    if last is None:
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        return wait_until(lambda: manager.table.scan().leaves - before, t0, timeout,
                          f"a replacement for leaf {victim}", manager)
    watch = NewChildren(manager.table, parent, last)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while not watch.found_leaf():
        if time.monotonic() - t0 > timeout:
            manager.check_alive()
            raise Failed(f"timed out after {timeout:g}s waiting for a replacement for leaf {victim}; "
                         f"children of its parent {parent} now: {_children_of(parent)}")
        time.sleep(FAST_POLL)
    seconds = time.monotonic() - t0
    watch.forget()
    manager.table.scan()
    return seconds


FAST_POLL = 0.0002
PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def _last_pid() -> Optional[int]:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def _children_of(parent: int) -> str:
    """What a failure report shows: each child's pid, state and command line."""
    found = [f"{pid} {stat[1]} {read_cmdline(pid).strip()!r}" for pid in sorted(all_pids())
             if (stat := read_stat(pid)) is not None and stat[0] == parent]
    return "; ".join(found) or "none"


class NewChildren:
    """Children of `parent` created after pid `last` was handed out; is one a leaf yet?"""

    def __init__(self, table: ProcTable, parent: int, last: int) -> None:
        self.table, self.parent, self.last = table, parent, last
        self.children: List[int] = []
        # Pids handed out but not in /proc yet: the kernel allocates a pid before the new
        # task is visible there, so a read can fall in between. Read again on every poll.
        self.unseen: List[int] = []

    def found_leaf(self) -> bool:
        current = _last_pid()
        span: List[int] = []
        if current != self.last:
            first, self.last = self.last + 1, current
            span = [*range(first, current + 1)] if current >= first else [*range(first, PID_MAX), *range(1, current + 1)]
        candidates, self.unseen = self.unseen + span, []
        for pid in candidates:
            stat = read_stat(pid)
            if stat is None:
                self.unseen.append(pid)
            elif stat[0] == self.parent:
                self.children.append(pid)
        for pid in self.children:
            stat = read_stat(pid)
            if stat is not None and stat[1] != "Z":
                self.table.stat[pid] = stat
                if self.table.is_leaf(self.table, pid):
                    return True
        return False

    def forget(self) -> None:
        """Leave the new pids for the table's own scan to place in the tree."""
        for pid in self.children:
            self.table.stat.pop(pid, None)


def storm(manager: Manager, n: int, timeout: float) -> float:
    """SIGKILL every leaf at once; seconds until n new leaves are alive."""
    victims = set(manager.table.scan().leaves)
    t0 = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return wait_until(lambda: len(manager.table.scan().leaves - victims) >= n, t0, timeout,
                      f"{n} replacements after killing {len(victims)} leaves", manager)


def idle_cpu(manager: Manager, window: float) -> float:
    """CPU of every non-leaf process over `window` seconds of steady state, % of one core."""
    procs = [psutil.Process(pid) for pid in manager.table.scan().managers()]
    t0, before = time.monotonic(), _cpu(procs)
    time.sleep(window)
    return (_cpu(procs) - before) / (time.monotonic() - t0) * 100


def _cpu(procs: List[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def memory(manager: Manager) -> Dict[str, float]:
    """Manager RSS, all non-leaf RSS, total USS of the tree and mean USS of a leaf (MiB)."""
    table = manager.table.scan()
    mib = 1024 * 1024
    managers = {pid: psutil.Process(pid).memory_full_info() for pid in table.managers()}
    leaves = [psutil.Process(pid).memory_full_info().uss for pid in table.leaves]
    return {
        "manager_rss_mib": managers[table.root].rss / mib,
        "root_rss_mib": managers[_tree_root(table, managers)].rss / mib,
        "managers_rss_mib": sum(info.rss for info in managers.values()) / mib,
        "tree_uss_mib": (sum(info.uss for info in managers.values()) + sum(leaves)) / mib,
        "leaf_uss_mib": statistics.mean(leaves) / mib,
    }


def _tree_root(table: ProcTable, managers: Dict[int, object]) -> int:
    """orch's root (the process titled `orch: <tree> (root)`, below its guardian); the manager
    itself for every other contender."""
    from proctable import read_cmdline

    for pid in managers:
        if read_cmdline(pid).strip().endswith(" (root)"):
            return pid
    return table.root


def tree_json(manager: Manager, calls: int, expect_nodes: int) -> float:
    """Median seconds of `orch tree --json` (the whole CLI call, as a user sees it)."""
    samples = []
    for _ in range(calls):
        t0 = time.monotonic()
        result = subprocess.run(manager.launch.tree_json, env=manager.launch.env,
                                capture_output=True, text=True, timeout=60)
        samples.append(time.monotonic() - t0)
        if result.returncode != 0 or result.stdout.count('"pid"') < expect_nodes:
            raise Failed(f"`orch tree --json` failed ({result.returncode}): {result.stderr[-500:]}")
    return statistics.median(samples)


def teardown(manager: Manager, timeout: float) -> float:
    """The stop command to the last leaf gone."""
    leaves = set(manager.table.scan().leaves)
    t0 = time.monotonic()
    stopper = manager.launch.stop(manager.process.pid)
    seconds = wait_gone(leaves, t0, timeout)
    if stopper is not None:
        stopper.wait(timeout)
    manager.process.wait(timeout)
    return seconds


def orphans(manager: Manager, grace: float, timeout: float) -> Tuple[int, float]:
    """SIGKILL the manager; the leaves it leaves behind, and the seconds until the last
    leaf that exited did.

    Leaves killed with their manager take time to exit (each exit unmaps its address
    space: thousands take seconds on 2 cores), so a fixed window would count the slow
    as leaked. A leaf still alive once none has exited for `grace` seconds is one
    nobody is going to kill."""
    leaves = set(manager.table.scan().leaves)
    t0 = time.monotonic()
    os.kill(manager.process.pid, signal.SIGKILL)
    manager.process.wait()
    alive, last = wait_exits(leaves, t0, timeout, quiet=grace)
    return alive, max(0.0, last - t0)


def cleanup() -> Set[int]:
    """SIGKILL and reap every descendant of this process, by pid. We are a subreaper, so
    orphans of a killed manager are ours too. Returns the pids that had to be killed."""
    killed: Set[int] = set()
    for _ in range(5):
        procs = psutil.Process().children(recursive=True)
        if not procs:
            break
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
                killed.add(proc.pid)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
    return killed
