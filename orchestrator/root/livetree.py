"""The OS's view of a running tree: the root and its descendants, read from /proc."""
from __future__ import annotations

import os
import time
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from orchestrator.engine.osproc import children_of

# psutil's status words, by the state letter of /proc/PID/stat (psutil's _pslinux.PROC_STATUSES).
_STATUS = {"R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped", "t": "tracing-stop",
           "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill", "W": "waking", "I": "idle", "P": "parked"}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_boot_time: Optional[float] = None


class LiveProcess(NamedTuple):
    """One process as /proc shows it (a tuple: thousands are made per `orch tree`)."""

    pid: int
    ppid: Optional[int]
    status: Optional[str]
    create_time: Optional[float]
    name: Optional[str]
    rss: Optional[int] = None  # bytes
    cpu: Optional[float] = None  # user + system CPU seconds so far
    pgid: Optional[int] = None


def snapshot(root_pid: int) -> Dict[int, LiveProcess]:
    """Every live process at or below `root_pid` (zombies included, as psutil lists them).

    Reads /proc/PID/stat of the tree's processes only, found by walking down from
    `root_pid` through /proc/PID/task/TID/children: two small reads per process of the
    tree, whatever else the machine runs. When the tree is most of the machine (as the
    last snapshot says), one read per process of the machine is fewer: every stat is
    read and the tree is found by ppid.
    """
    global _last_size
    names = os.listdir("/proc") if _last_size > _WALK_ALWAYS else None
    if names is not None and len(names) < 2 * _last_size:
        found = _by_ppid(root_pid, [int(name) for name in names if name.isdigit()])
    else:
        found = _walk(root_pid)
    _last_size = len(found)
    return found


# Trees up to this size are always walked; above it, the cheaper of the two ways is taken.
_WALK_ALWAYS = 256
_last_size = 0


def _walk(root_pid: int) -> Dict[int, LiveProcess]:
    found: Dict[int, LiveProcess] = {}
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        read = _read_stat(pid)
        if read is None:
            continue  # gone meanwhile
        proc, threads = read
        found[pid] = proc
        stack.extend(children_of(pid, threads))
    return found


def _by_ppid(root_pid: int, pids: List[int]) -> Dict[int, LiveProcess]:
    every: Dict[int, LiveProcess] = {}
    children: Dict[Optional[int], List[int]] = {}
    for pid in pids:
        read = _read_stat(pid)
        if read is not None:
            every[pid] = read[0]
            children.setdefault(read[0].ppid, []).append(pid)
    found: Dict[int, LiveProcess] = {}
    stack = [root_pid] if root_pid in every else []
    while stack:
        pid = stack.pop()
        found[pid] = every[pid]
        stack.extend(children.get(pid, ()))
    return found


def _read_stat(pid: int) -> Optional[Tuple[LiveProcess, int]]:
    """The process from /proc/PID/stat (as psutil computes each field) and its thread count."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 2048)
    except OSError:
        return None
    finally:
        os.close(fd)
    right = data.rfind(b")")
    fields = data[right + 2:].split()
    if right < 0 or len(fields) < 22:
        return None
    state = fields[0].decode()
    proc = LiveProcess(
        pid=pid, ppid=int(fields[1]), status=_STATUS.get(state, state),
        create_time=int(fields[19]) / _CLOCK_TICKS + _boot(),
        name=data[data.find(b"(") + 1:right].decode(errors="replace"),
        rss=int(fields[21]) * _PAGE_SIZE,
        cpu=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, pgid=int(fields[2]))
    return proc, int(fields[17])


def _boot() -> float:
    """The machine's boot time (epoch seconds), from /proc/stat as psutil reads it."""
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as file:
            _boot_time = next((float(line.split()[1]) for line in file if line.startswith(b"btime")), 0.0)
    return _boot_time


class CpuMeter:
    """CPU percent of one core since the previous sample, as psutil's
    `cpu_percent(interval=None)` measures it: None on a process's first sample.

    Keeps (CPU seconds, monotonic time) per (pid, create_time) from the last sample;
    processes gone since are forgotten at the next sample.
    """

    def __init__(self) -> None:
        self._last: Dict[Tuple[int, Optional[float]], Tuple[float, float]] = {}

    def percents(self, live: Mapping[int, LiveProcess], sample: bool = True) -> Dict[int, Optional[float]]:
        """pid -> percent for every process in `live`; `sample` makes this the new baseline."""
        now = time.monotonic()
        percents: Dict[int, Optional[float]] = {}
        current: Dict[Tuple[int, Optional[float]], Tuple[float, float]] = {}
        for proc in live.values():
            percents[proc.pid] = None
            if proc.cpu is None:
                continue
            key = (proc.pid, proc.create_time)
            current[key] = (proc.cpu, now)
            previous = self._last.get(key)
            if previous is not None and now > previous[1]:
                percents[proc.pid] = round(max(0.0, proc.cpu - previous[0]) / (now - previous[1]) * 100, 1)
        if sample:
            self._last = current
        return percents


def is_gone(pid: int, create_time: Optional[float] = None) -> bool:
    """True once `pid` has exited: gone, a zombie awaiting its parent, or reused."""
    import psutil  # here, not at the top: the CLI's `orch tree` imports this module and never calls this

    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def signal_if_same(pid: int, create_time: Optional[float], signum: int) -> bool:
    """Signal `pid` only if it is still the process created at `create_time` (pids get
    reused); True if it was signalled."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return False
        proc.send_signal(signum)
        return True
    except psutil.Error:
        return False


def wait_gone(pids: Iterable[int], timeout: float) -> List[int]:
    """Wait until every pid has exited (a zombie counts: it is only waiting to be
    reaped by a parent we do not control). Returns the pids still alive.

    This runs in the CLI, not in a supervisor loop, and other processes cannot be
    waited on without polling; the interval grows to keep the cost low.
    """
    watched = {pid: _create_time(pid) for pid in pids}
    deadline = time.monotonic() + timeout
    interval = 0.005
    while True:
        watched = {pid: created for pid, created in watched.items() if not is_gone(pid, created)}
        if not watched or time.monotonic() >= deadline:
            return sorted(watched)
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


def _create_time(pid: int) -> Optional[float]:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
