"""Where orch's time goes: py-spy samples of the orch-fork root during each phase at the largest N."""
from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import figures as fig
from contenders import BY_NAME

RATE = 500  # samples per second
TOP = 12


def _py_spy() -> Optional[str]:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def _record(py_spy: str, out: Path, target: List[str], idle: bool = True) -> subprocess.Popen:
    argv = [py_spy, "record", "--format", "raw", "--rate", str(RATE), "--nonblocking", "-o", str(out)]
    argv += ["--idle"] if idle else []
    return subprocess.Popen(argv + target, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _attach(py_spy: str, out: Path, pid: int, idle: bool = True) -> subprocess.Popen:
    spy = _record(py_spy, out, ["--pid", str(pid)], idle)
    time.sleep(0.5)  # let it attach before the phase starts
    if spy.poll() is not None:
        raise fig.Failed(f"py-spy could not attach to {pid} (exit code {spy.returncode})")
    return spy


def _stop(spy: subprocess.Popen) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    spy.wait(30)


WAITING = ("select", "poll", "sleep", "wait")
# The call chain every sample of the root shares: left out of the inclusive list.
CHAIN = ("_run_module_as_main ", "_run_code ", "<module> (__main__.py)", "main (cli.py)", "cmd_up (cli.py)",
         "Root.run ", "Supervisor.run ", "Loop.run ")


def summarize(raw: Path, title: str) -> dict:
    """Collapsed stacks -> the share spent waiting, and among busy samples the functions most
    often on the stack (inclusive; the call chain every sample shares is left out) and on top (self)."""
    inclusive: Dict[str, int] = collections.Counter()
    own: Dict[str, int] = collections.Counter()
    total = busy = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        frames = [_frame(frame) for frame in stack.split(";") if frame]
        if not frames or not count.isdigit():
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        if any(word in frames[-1].split(" ")[0].lower() for word in WAITING):
            continue
        busy += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    inclusive = collections.Counter({frame: n for frame, n in inclusive.items() if not frame.startswith(CHAIN)})
    pct = lambda counter, of: [(frame, 100.0 * n / of) for frame, n in counter.most_common(TOP)] if of else []
    return {"title": title, "samples": total, "busy_pct": 100.0 * busy / total if total else 0.0,
            "inclusive": pct(inclusive, busy), "self": pct(own, total)}


def _frame(frame: str) -> str:
    """`func (/long/path/module.py:123)` -> `func (module.py)`."""
    match = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({os.path.basename(match.group(2))})"


def profile(n: int, out: Path, settings) -> dict:
    """Run orch-fork at N=n twice under py-spy; return a summary per phase."""
    py_spy = _py_spy()
    if py_spy is None:
        return {"note": "py-spy is not installed; no profile"}
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ob-profile-"))
    phases: List[dict] = []
    try:
        phases.append(_bring_up(py_spy, n, out, workdir / "a", settings))
        fig.cleanup()
        phases += _running_phases(py_spy, n, out, workdir / "b", settings)
    except fig.Failed as error:
        return {"note": f"profiling failed: {error}", "phases": phases}
    finally:
        fig.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"note": f"py-spy {RATE} Hz, `--idle` (waiting shows as select/poll) except the idle phase, "
                    f"orch-fork at N={n}; raw stacks in bench/profile/ (gitignored)", "phases": phases}


def _bring_up(py_spy: str, n: int, out: Path, workdir: Path, settings) -> dict:
    """py-spy launches the root itself, so the samples start with the interpreter."""
    workdir.mkdir(parents=True)
    launch = BY_NAME["orch-fork"].launch(workdir, n, dict(os.environ))
    launch.argv = [py_spy, "record", "--format", "raw", "--rate", str(RATE), "--nonblocking", "--idle",
                   "-o", str(out / "bringup.raw"), "--", *launch.argv]
    manager, seconds = fig.bring_up(launch, n, workdir / "manager.log", settings.timeout(n))
    _stop(manager.process)
    return summarize(out / "bringup.raw", f"bring-up of {n} leaves ({seconds * 1000:.0f} ms under py-spy)")


def _running_phases(py_spy: str, n: int, out: Path, workdir: Path, settings) -> List[dict]:
    workdir.mkdir(parents=True)
    launch = BY_NAME["orch-fork"].launch(workdir, n, dict(os.environ))
    manager, _ = fig.bring_up(launch, n, workdir / "manager.log", settings.timeout(n))
    root = manager.process.pid
    time.sleep(settings.settle)
    phases = []

    spy = _attach(py_spy, out / "idle.raw", root, idle=False)
    time.sleep(settings.idle)
    _stop(spy)
    phases.append(summarize(out / "idle.raw", f"idle, {settings.idle:g} s (only samples where the root was busy)"))

    spy = _attach(py_spy, out / "tree_json_root.raw", root)
    seconds = fig.tree_json(manager, settings.json_calls, n)
    _stop(spy)
    phases.append(summarize(out / "tree_json_root.raw", f"root while serving `orch tree --json` "
                                                        f"x{settings.json_calls} (median {seconds * 1000:.0f} ms)"))
    cli = _record(py_spy, out / "tree_json_cli.raw", ["--", *launch.tree_json])
    cli.wait(60)
    phases.append(summarize(out / "tree_json_cli.raw", "the `orch tree --json` CLI process"))

    spy = _attach(py_spy, out / "restart.raw", root)
    samples = fig.restart_latencies(manager, settings.kills, random.Random(2), settings.kill_timeout, 60)
    _stop(spy)
    phases.append(summarize(out / "restart.raw", f"{len(samples)} single-leaf restarts"))

    spy = _attach(py_spy, out / "storm.raw", root)
    seconds = fig.storm(manager, n, settings.timeout(n))
    _stop(spy)
    phases.append(summarize(out / "storm.raw", f"storm of {n} ({seconds * 1000:.0f} ms under py-spy)"))

    time.sleep(settings.settle)
    spy = _attach(py_spy, out / "teardown.raw", root)
    seconds = fig.teardown(manager, settings.timeout(n))
    _stop(spy)
    phases.append(summarize(out / "teardown.raw", f"teardown of {n} ({seconds * 1000:.0f} ms under py-spy)"))
    return phases
