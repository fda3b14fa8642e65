"""CPU of `orch top` watching a tree of N workers (target: under 5% of one core at N = 1000).

    python3 bench/top_cpu.py [--n 1000] [--seconds 30] [--expand]

Starts a tree detached in a private run directory (root -> 10 supervisors -> N/10
`orch.sleep` replicas each, fork, as bench/health_idle.py builds it), runs `orch top`
in a private tmux server (120x40), waits for its first screen, then reads the CPU
time (user + system) of the `orch top` process with psutil over the window. It also
counts the control requests the root answered meanwhile (`ping`'s `requests`), so
the load `orch top` adds to the root shows next to its own CPU. With `--expand`,
the first replica group is expanded (Enter) and the view scrolled into it, so 30
worker rows and their log tails are on the screen instead of 20 collapsed lines.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from health_idle import GROUPS, tree  # noqa: E402  (the same generated tree)

NAME = "topbench"
SOCKET = f"orch-top-bench-{os.getpid()}"


def churning_tree(name: str, n: int) -> str:
    """The same tree, but g0's workers exit after 2 s and restart at once, for ever: about
    N/20 restarts a second, so events.jsonl never rests and `orch top` refreshes as often as it may."""
    others = tree(name, n, limits=False, check=5.0).split("[[children]]")[2:]  # g1 .. g9 as they are
    churn = (f'[[children]]\nname = "g0"\nmax_restarts = 1000000\nwithin = 1.0\n'
             f'  [[children.children]]\n  name = "w"\n  worker = "orch.exit"\n  args = {{ after = 2.0 }}\n'
             f'  restart = "always"\n  backoff_max = 1.0\n  replicas = {n // GROUPS}\n')
    return f'name = "{name}"\n' + churn + "".join("[[children]]" + group for group in others)


def orch(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def tmux(*args: str, env: Dict[str, str]) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, *args], env=env, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def wait_screen(env: Dict[str, str], text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux("capture-pane", "-p", env=env)
        if text in screen:
            return screen
        if time.monotonic() > deadline:
            raise SystemExit(f"`orch top` never showed {text!r}; the screen:\n{screen}")
        time.sleep(0.1)


def requests_answered(env: Dict[str, str]) -> Dict[str, int]:
    """The root's count of the control requests it answered, by command (a `ping` asks)."""
    from orchestrator.root import control

    os.environ[control.ENV_RUN_DIR] = env[control.ENV_RUN_DIR]
    return control.request(NAME, {"cmd": "ping"}, timeout=30)["requests"]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(n: int, seconds: float, expand: bool, churn: bool) -> List[str]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {key: value for key, value in os.environ.items() if key != "TMUX"}
        env.update(ORCH_RUN_DIR=str(Path(tmp) / "run"), ORCH_LOG_DIR=str(Path(tmp) / "logs"))
        file = Path(tmp) / "tree.toml"
        file.write_text(churning_tree(NAME, n) if churn else tree(NAME, n, limits=False, check=5.0))
        started = orch(env, "up", str(file), "--detach")
        if started.returncode != 0:
            raise SystemExit(f"orch up failed: {started.stdout}{started.stderr}")
        try:
            command = f"exec {sys.executable} -m orchestrator top {NAME}"
            tmux("new-session", "-d", "-x", "120", "-y", "40", "-e", f"ORCH_RUN_DIR={env['ORCH_RUN_DIR']}",
                 "-e", f"ORCH_LOG_DIR={env['ORCH_LOG_DIR']}", command, env=env)
            launched = time.monotonic()
            top = psutil.Process(int(tmux("display", "-p", "#{pane_pid}", env=env).strip()))
            wait_screen(env, "restarts in the last minute")
            first_screen = time.monotonic() - launched
            if expand:
                tmux("send-keys", "j", "j", "Enter", *["j"] * 30, env=env)
                wait_screen(env, "w#29")
            time.sleep(2.0)  # settle: the first draws and rich's import are behind us
            before_requests = requests_answered(env)
            before, at = cpu_seconds(top), time.monotonic()
            time.sleep(seconds)
            used, elapsed = cpu_seconds(top) - before, time.monotonic() - at
            after_requests = requests_answered(env)
            tree_requests = after_requests.get("tree", 0) - before_requests.get("tree", 0)
            screen = tmux("capture-pane", "-p", env=env)
            tmux("send-keys", "q", env=env)
            return [
                f"N={n} ({'first group expanded' if expand else 'collapsed view'}"
                f"{', g0 restarting ~%d workers a second' % (n // GROUPS // 2) if churn else ''}): orch top used "
                f"{100.0 * used / elapsed:.2f}% of one core over {elapsed:.0f} s "
                f"({used:.2f} s CPU; total since launch {cpu_seconds_total(top):.2f} s)",
                f"  first screen after {first_screen:.2f} s; the root answered {tree_requests} `tree` requests "
                f"in that window ({tree_requests / elapsed:.2f}/s)",
                "  the screen at the end:", *("  | " + line for line in screen.rstrip().splitlines()),
            ]
        finally:
            subprocess.run(["tmux", "-L", SOCKET, "kill-server"], env=env, capture_output=True)
            orch(env, "down", NAME)


def cpu_seconds_total(proc: psutil.Process) -> float:
    try:
        return cpu_seconds(proc)
    except psutil.Error:
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--expand", action="store_true", help="expand the first replica group and scroll into it")
    parser.add_argument("--churn", action="store_true",
                        help="g0's workers exit every 2 s and restart: the events never stop")
    args = parser.parse_args()
    print("\n".join(measure(args.n, args.seconds, args.expand, args.churn)))


if __name__ == "__main__":
    main()
