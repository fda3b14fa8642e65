"""Soak: 50 workers under a steady stream of SIGKILLs for ~30 s. Every kill is repaired, and
the root's (and each supervisor's) memory and open fds show no growth.

The longer, configurable version for manual runs is bench/soak.py.
"""
import os
import random
import statistics
import time

import psutil
import pytest

from orchestrator.root.orphans import LEFTOVER_SCAN_INTERVAL
from orchestrator.testing import gone, wait_for
from tests.helpers import PLUGIN, matches_spec

NAME = f"soak-{os.getpid()}"  # unique: a same-named tree elsewhere would be evicted by ours
SUPERVISORS = ["s1", "s2", "s3", "s4"]
PER_SUPERVISOR = 12
ROOT_WORKERS = 2  # so the root repairs its own children too: 4 * 12 + 2 = 50 workers
SOAK_SECONDS = 30.0
WARM_UP = 4.0  # kills before the first sample: allocator and caches settle
SAMPLE_EVERY = 2.0
KILL_INTERVAL = (0.05, 0.1)
# The root's periodic repair pass (its leftover scan) first runs LEFTOVER_SCAN_INTERVAL after
# it starts, inside the soak: kill faster around it, so repairs are in flight while it runs.
SCAN_BURST = (-0.2, 1.0)  # seconds around the scan
SCAN_BURST_INTERVAL = 0.01
SCAN_BURST_KILLS = 4  # per round
MAX_KILLS = 800
FD_SLACK = 2
RSS_SLACK = 0.02  # healthy runs stay flat within 0.3 %; a 16 KiB-per-restart leak shows as +2.5 %
INTENSITY = "max_restarts = 100000\nwithin = 10\n"
WORKER = 'worker = "t.sleep"\nrestart = "always"\nbackoff = 0.05\nbackoff_max = 0.5\n'


def soak_tree() -> str:
    parts = [f'name = "{NAME}"\nplugins = ["{PLUGIN}"]\n{INTENSITY}']
    parts += [f'[[children]]\nname = "w{i}"\n{WORKER}' for i in range(ROOT_WORKERS)]
    for sup in SUPERVISORS:
        parts.append(f'[[children]]\nname = "{sup}"\nrestart = "always"\n{INTENSITY}')
        parts += [f'[[children.children]]\nname = "w{i}"\n{WORKER}' for i in range(PER_SUPERVISOR)]
    return "\n".join(parts)


WORKER_PATHS = [f"w{i}" for i in range(ROOT_WORKERS)] + [
    f"{sup}/w{i}" for sup in SUPERVISORS for i in range(PER_SUPERVISOR)]


def live_workers(root: psutil.Process):
    """Worker processes now, told by their title (`orch: NAME/s1/w3`); one scan of /proc."""
    workers = []
    for proc in root.children(recursive=True):
        try:
            title = " ".join(proc.cmdline()).strip()  # setproctitle pads argv
        except psutil.Error:
            continue
        if title.removeprefix(f"orch: {NAME}/") in WORKER_PATHS:
            workers.append(proc)
    return workers


def unexpected_events(output: str):
    """Root output lines other than the kills and restarts this test causes."""
    routine = ("was killed by SIGKILL", ": restarting ", "keeps exiting soon after start", " is up: ")
    return [line for line in output.splitlines() if not any(word in line for word in routine)]


def sample(managers):
    row = {}
    for label, proc in managers.items():
        with proc.oneshot():
            row[label] = (proc.memory_info().rss, proc.num_fds())
    return row


def repaired(tree, killed):
    """The nodes by path once the tree matches its spec again and every killed pid is gone."""
    nodes = matches_spec(tree)
    if not nodes or not all(gone(pid, created) for pid, created in killed.items()):
        return False
    return nodes


def third_medians(series):
    third = max(1, len(series) // 3)
    return statistics.median(series[:third]), statistics.median(series[-third:])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_soak_every_kill_is_repaired_and_nothing_grows(orch_tree):
    tree = orch_tree(soak_tree())
    start_pids = tree.pids()
    managers = {label: psutil.Process(start_pids[label]) for label in ["", *SUPERVISORS]}
    rng = random.Random(4242)
    killed = {}  # pid -> create_time
    samples = []
    started = time.monotonic()
    next_sample = started + WARM_UP
    next_kill = started
    scan_at = time.monotonic() + (managers[""].create_time() + LEFTOVER_SCAN_INTERVAL - time.time())
    # The soak covers the root's first periodic scan however long the tree took to come up
    # (on a loaded 2-core machine that can be most of a second after the root started).
    ends = max(started + SOAK_SECONDS, scan_at + SCAN_BURST[1] + 0.5)
    while time.monotonic() < ends and len(killed) < MAX_KILLS:
        time.sleep(max(0.0, next_kill - time.monotonic()))  # the kill pace, not synchronisation
        in_burst = SCAN_BURST[0] <= time.monotonic() - scan_at <= SCAN_BURST[1]
        next_kill = time.monotonic() + (SCAN_BURST_INTERVAL if in_burst else rng.uniform(*KILL_INTERVAL))
        candidates = [proc for proc in live_workers(managers[""]) if proc.pid not in killed]
        for victim in rng.sample(candidates, min(len(candidates), SCAN_BURST_KILLS if in_burst else 1)):
            try:
                created = victim.create_time()
                victim.kill()  # psutil refuses if the pid now names another process
                killed[victim.pid] = created
            except psutil.NoSuchProcess:
                pass
        if time.monotonic() >= next_sample:
            samples.append(sample(managers))
            next_sample += SAMPLE_EVERY

    nodes = wait_for(lambda: repaired(tree, killed), timeout=15,
                     message=f"all {len(WORKER_PATHS)} workers running again and the {len(killed)} killed pids gone")
    restarts = sum(nodes[path]["restarts"] for path in WORKER_PATHS)
    surprises = unexpected_events(tree.read_output())
    assert surprises == [], "the root did more than repair the kills:\n" + "\n".join(surprises)
    assert len(killed) >= 250, f"only {len(killed)} kills in {SOAK_SECONDS:g}s"
    assert restarts == len(killed), (f"{len(killed)} kills but {restarts} restarts; other events:\n"
                                     + "\n".join(unexpected_events(tree.read_output())))
    assert {path: start_pids[path] for path in ["", *SUPERVISORS]} == \
        {path: nodes[path]["pid"] for path in ["", *SUPERVISORS]}, "a supervisor was replaced"
    assert len(samples) >= 9, samples

    for label in managers:
        rss = [row[label][0] for row in samples]
        fds = [row[label][1] for row in samples]
        who = f"{label or 'root'} (pid {managers[label].pid})"
        first, last = third_medians(fds)
        assert last <= first + FD_SLACK, f"{who}: open fds grow under kills: {fds}"
        first, last = third_medians(rss)
        assert last <= first * (1 + RSS_SLACK), \
            f"{who}: RSS grows under kills (KiB): {[value // 1024 for value in rss]}"
    assert tree.process.poll() is None
