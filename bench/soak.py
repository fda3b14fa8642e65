"""Soak an orch tree under a steady stream of SIGKILLs and watch the root for leaks and zombies.

Usage (from the repository, with orch installed):

    python3 bench/soak.py --workers 200 --minutes 10 --kill-interval 0.05

It writes a tree of WORKERS `orch.sleep` workers (restart = "always") spread over
SUPERVISORS supervisors into a private temporary ORCH_RUN_DIR, starts it with
`orch up --detach`, then SIGKILLs a random worker every KILL_INTERVAL seconds for
MINUTES minutes. Every REPORT_EVERY seconds it prints one line:

    elapsed  kills  repairs  not-running  root RSS  root fds  supervisors RSS/fds  zombies seen  oldest zombie

and at the end a verdict (exit code 0 PASS, 1 FAIL): every kill repaired (restarts ==
kills, every node running again), no growth of RSS (last third vs first third median,
+10 %) or fds (+2) in the root and supervisors, no zombie older than --zombie-bound, and
nothing in the root's output beyond the kills and restarts themselves.

Whatever happens (Ctrl-C included) the tree is stopped with `orch down`, then every
process ever seen is SIGKILLed by pid (checked against its create time), and the
temporary run directory is removed. The tests' short version is tests/process/test_soak.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import psutil

ROUTINE = ("was killed by SIGKILL", ": restarting ", "keeps exiting soon after start", " is up: ",
           "stopping tree", " stopped; ")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=50, help="workers in the tree (default 50)")
    parser.add_argument("--supervisors", type=int, default=0,
                        help="supervisors to spread them over (default: one per 25 workers, at least 2)")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to keep killing (default 1)")
    parser.add_argument("--kill-interval", type=float, default=0.05, help="seconds between kills (default 0.05)")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds between report lines")
    parser.add_argument("--warm-up", type=float, default=10.0,
                        help="seconds of kills before RSS/fd samples count toward the verdict")
    parser.add_argument("--zombie-bound", type=float, default=0.5,
                        help="a zombie older than this many seconds fails the run (default 0.5)")
    parser.add_argument("--backoff-max", type=float, default=1.0, help="workers' backoff_max (default 1.0)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for victim choice")
    args = parser.parse_args(argv)
    if args.supervisors <= 0:
        args.supervisors = max(2, args.workers // 25)
    return args


# ----- the tree --------------------------------------------------------------------------


def tree_text(name: str, workers: int, supervisors: int, backoff_max: float) -> str:
    intensity = "max_restarts = 1000000\nwithin = 10\n"
    worker = f'worker = "orch.sleep"\nrestart = "always"\nbackoff = 0.05\nbackoff_max = {backoff_max}\n'
    parts = [f'name = "{name}"\n{intensity}']
    for s in range(supervisors):
        count = workers // supervisors + (1 if s < workers % supervisors else 0)
        parts.append(f'[[children]]\nname = "s{s}"\nrestart = "always"\n{intensity}')
        parts += [f'[[children.children]]\nname = "w{i}"\n{worker}' for i in range(count)]
    return "\n".join(parts)


class Tree:
    """A detached tree in a private run directory; everything seen is remembered for cleanup."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name = f"soak-{os.getpid()}"
        self.base = Path(tempfile.mkdtemp(prefix="orch-soak-"))
        self.env = dict(os.environ, ORCH_RUN_DIR=str(self.base / "run"), ORCH_DISABLE_PLUGIN_AUTOLOAD="1")
        self.file = self.base / f"{self.name}.toml"
        self.file.write_text(tree_text(self.name, args.workers, args.supervisors, args.backoff_max))
        self.log = self.base / "run" / self.name / "output.log"
        self.root: Optional[psutil.Process] = None
        self.seen: Dict[int, float] = {}  # pid -> create_time

    def orch(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=self.env, timeout=timeout,
                              capture_output=True, text=True)

    def up(self) -> None:
        result = self.orch("up", str(self.file), "--detach", timeout=300)
        if result.returncode != 0:
            raise SystemExit(f"orch up failed ({result.returncode}):\n{result.stderr}")
        self.root = psutil.Process(int(result.stdout.strip()))
        self.remember([self.root] + self.root.children(recursive=True))

    def remember(self, procs) -> None:
        for proc in procs:
            try:
                self.seen.setdefault(proc.pid, proc.create_time())
            except psutil.Error:
                continue

    def nodes(self) -> List[dict]:
        result = self.orch("tree", self.name, "--json", timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"orch tree failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def managers(self) -> List[psutil.Process]:
        procs = [self.root]
        for proc in self.root.children():
            if title(proc).startswith(f"orch: {self.name}/s"):
                procs.append(proc)
        return procs

    def cleanup(self) -> None:
        try:
            if self.root is not None and self.root.is_running():
                self.remember([self.root] + self.root.children(recursive=True))
                self.orch("down", self.name, timeout=120)
        except (psutil.Error, subprocess.TimeoutExpired):
            pass
        finally:
            leftovers = []
            for pid, created in self.seen.items():
                try:
                    proc = psutil.Process(pid)
                    if proc.create_time() == created:
                        proc.kill()
                        leftovers.append(proc)
                except psutil.Error:
                    continue
            psutil.wait_procs(leftovers, timeout=10)
            shutil.rmtree(self.base, ignore_errors=True)


def title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()).strip()  # setproctitle pads argv with empty strings
    except psutil.Error:
        return ""


def cached_title(proc: psutil.Process, cache: Dict[tuple, str]) -> str:
    """A process's title; worker titles are final, so those are kept (a fresh fork still has its parent's)."""
    try:
        key = (proc.pid, proc.create_time())
    except psutil.Error:
        return ""
    if key not in cache:
        text = title(proc)
        if "/w" not in text:
            return text
        cache[key] = text
    return cache[key]


def is_worker(text: str, prefix: str) -> bool:
    """`orch: NAME/s3/w7` is a worker; `orch: NAME/s3` a supervisor."""
    return text.startswith(prefix) and "/w" in text[len(prefix):]


# ----- measuring ---------------------------------------------------------------------------


class Zombies:
    """First and last time each zombie of the tree was seen."""

    def __init__(self) -> None:
        self.first: Dict[tuple, float] = {}
        self.last: Dict[tuple, float] = {}

    def sample(self, procs) -> None:
        now = time.monotonic()
        for proc in procs:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    key = (proc.pid, proc.create_time())
                    self.first.setdefault(key, now)
                    self.last[key] = now
            except psutil.Error:
                continue

    def oldest(self) -> float:
        return max((self.last[key] - first for key, first in self.first.items()), default=0.0)


def resources(procs) -> List[tuple]:
    """(rss, fds) of each manager, root first."""
    found = []
    for proc in procs:
        try:
            with proc.oneshot():
                found.append((proc.memory_info().rss, proc.num_fds()))
        except psutil.Error:
            found.append((0, 0))
    return found


def grows(series: List[float], slack: float, relative: bool) -> bool:
    if len(series) < 3:
        return False
    third = len(series) // 3
    first, last = statistics.median(series[:third]), statistics.median(series[-third:])
    return last > (first * (1 + slack) if relative else first + slack)


# ----- the run ------------------------------------------------------------------------------


def soak(args: argparse.Namespace, tree: Tree) -> int:
    rng = random.Random(args.seed)
    managers = tree.managers()
    worker_prefix = f"orch: {tree.name}/s"
    zombies = Zombies()
    killed: Dict[int, float] = {}
    samples: List[List[tuple]] = []
    started = time.monotonic()
    next_report = started + args.report_every
    print(f"tree {tree.name}: {args.workers} workers under {args.supervisors} supervisors, root pid "
          f"{tree.root.pid}; killing one every {args.kill_interval:g}s for {args.minutes:g} min", flush=True)
    print(f"{'elapsed':>8} {'kills':>7} {'repairs':>8} {'down':>5} {'root RSS':>9} {'fds':>5} "
          f"{'sups RSS':>9} {'sup fds':>8} {'zombies':>8} {'oldest':>8}", flush=True)
    titles: Dict[tuple, str] = {}  # (pid, create_time) -> worker title, read once per process
    next_kill = started
    while time.monotonic() - started < args.minutes * 60:
        time.sleep(max(0.0, next_kill - time.monotonic()))
        next_kill = max(next_kill + args.kill_interval, time.monotonic())
        procs = tree.root.children(recursive=True)  # NoSuchProcess if the root died: a failed run
        zombies.sample(procs)
        candidates = [p for p in procs if p.pid not in killed and is_worker(cached_title(p, titles), worker_prefix)]
        if candidates:
            victim = rng.choice(candidates)
            try:
                created = victim.create_time()
                victim.kill()
                killed[victim.pid] = created
                tree.seen.setdefault(victim.pid, created)
            except psutil.NoSuchProcess:
                pass
        if time.monotonic() >= next_report:
            next_report += args.report_every
            report(tree, managers, killed, zombies, samples, time.monotonic() - started, args)
    return verdict(tree, managers, killed, zombies, samples, args)


def report(tree, managers, killed, zombies, samples, elapsed, args) -> None:
    usage = resources(managers)
    if elapsed >= args.warm_up:
        samples.append(usage)
    try:
        nodes = tree.nodes()
        repairs = sum(n["restarts"] for n in nodes if n["kind"] == "worker")
        down = sum(1 for n in nodes if n["kind"] != "helper" and n["state"] != "running")
    except RuntimeError as error:
        repairs = down = f"? ({error})"
    sups = usage[1:]
    print(f"{elapsed:7.0f}s {len(killed):7d} {repairs!s:>8} {down!s:>5} {usage[0][0] / 2**20:8.1f}M "
          f"{usage[0][1]:5d} {sum(r for r, _ in sups) / 2**20:8.1f}M {sum(f for _, f in sups):8d} "
          f"{len(zombies.first):8d} {zombies.oldest() * 1000:6.0f}ms", flush=True)


def verdict(tree, managers, killed, zombies, samples, args) -> int:
    problems = []
    deadline = time.monotonic() + 30 + args.backoff_max
    nodes: List[dict] = []
    while time.monotonic() < deadline:
        zombies.sample(tree.root.children(recursive=True))
        nodes = [n for n in tree.nodes() if n["kind"] != "helper"]
        repairs = sum(n["restarts"] for n in nodes if n["kind"] == "worker")
        if all(n["state"] == "running" for n in nodes) and repairs >= len(killed):
            break
        time.sleep(0.1)
    repairs = sum(n["restarts"] for n in nodes if n["kind"] == "worker")
    not_running = [n["path"] for n in nodes if n["state"] != "running"]
    if not_running:
        problems.append(f"not running after the kills stopped: {not_running}")
    if repairs != len(killed):
        problems.append(f"{len(killed)} kills but {repairs} restarts")
    alive = [pid for pid, created in killed.items() if _exists(pid, created)]
    if alive:
        problems.append(f"killed processes still exist: {alive[:20]}")
    for index, proc in enumerate(managers):
        label = "root" if index == 0 else title(proc).rpartition("/")[2] or str(proc.pid)
        rss = [sample[index][0] for sample in samples]
        fds = [sample[index][1] for sample in samples]
        if grows(rss, 0.10, relative=True):
            problems.append(f"{label}: RSS grows (KiB): {[value // 1024 for value in rss]}")
        if grows(fds, 2, relative=False):
            problems.append(f"{label}: fds grow: {fds}")
    if zombies.oldest() > args.zombie_bound:
        problems.append(f"a zombie lived {zombies.oldest() * 1000:.0f} ms (bound {args.zombie_bound * 1000:.0f} ms)")
    surprises = [line for line in _read(tree.log).splitlines() if not any(word in line for word in ROUTINE)]
    if surprises:
        problems.append(f"{len(surprises)} unexpected lines in the root's output, e.g.:\n    "
                        + "\n    ".join(surprises[:10]))
    print(f"\n{len(killed)} kills, {repairs} repairs, {len(zombies.first)} zombies seen "
          f"(oldest {zombies.oldest() * 1000:.0f} ms), {len(samples)} resource samples after warm-up")
    if problems:
        print("VERDICT: FAIL\n  " + "\n  ".join(problems))
        return 1
    print("VERDICT: PASS")
    return 0


def _exists(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.NoSuchProcess:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    tree = Tree(args)
    signal.signal(signal.SIGTERM, _interrupt)  # unwind like Ctrl-C, so the finally below runs
    try:
        tree.up()
        return soak(args, tree)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except psutil.NoSuchProcess as error:
        print(f"VERDICT: FAIL: the root died ({error}); its output:\n{_read(tree.log)[-4000:]}")
        return 1
    finally:
        tree.cleanup()


if __name__ == "__main__":
    sys.exit(main())
