"""What a spawned worker costs before its code runs: `python -X importtime` of the child, and the
time from `Process.start()` to the child naming itself, for orch's worker and for bare's sleeper.

    python3 bench/spawn_imports.py                  # 20 starts of each, then one importtime breakdown
    python3 bench/spawn_imports.py --reps 50 --top 25

Run it with PYTHONPATH pointing at another checkout of orch to compare two versions.
Only stdlib is imported at module level: under spawn this script is re-run in every child as
`__mp_main__`, for both contenders alike.
"""
import os
import sys
import time

# Nothing else at module level: this script is re-run in every spawned child as __mp_main__.
BENCH = os.path.dirname(os.path.abspath(__file__))
TREE = 'name = "imports"\nstart_method = "spawn"\n\n[[children]]\nname = "w0"\nworker = "orch.sleep"\n'


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return handle.read().decode().strip()
    except OSError:
        return ""


def wait_named(pid: int, prefix: str, t0: float, timeout: float = 10.0) -> float:
    while not comm(pid).startswith((prefix, "orch: ")):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"pid {pid} never named itself {prefix!r}")
        time.sleep(0.0002)
    return time.monotonic() - t0


def orch_start():
    """(start() -> (pid, stop)) for orch's spawned worker, as a supervisor starts it."""
    import signal
    import tempfile
    from pathlib import Path

    from orchestrator.engine import child, spawn
    from orchestrator.spec.model import StartMethod, TreeContext
    from orchestrator.spec.validate import load_tree

    path = Path(tempfile.mkdtemp()) / "tree.toml"
    path.write_text(TREE)
    tree = load_tree(str(path))
    context = TreeContext.of(tree)
    node = tree.root.children[0]
    mp = spawn.mp_context(StartMethod.SPAWN)

    def start():
        running = spawn.start_node(mp, context, node, child.worker_main)

        def stop():
            os.kill(running.pid, signal.SIGKILL)
            spawn.reap(running)
            for fd in (running.stdout_fd, running.stderr_fd):
                os.close(fd)

        return running.pid, stop, running

    return start


def bare_start():
    import multiprocessing

    sys.path.insert(0, BENCH)
    import bare

    ctx = multiprocessing.get_context("spawn")

    def start():
        proc = ctx.Process(target=bare.sleeper)
        proc.start()

        def stop():
            proc.kill()
            proc.join()

        return proc.pid, stop, None

    return start


def latencies(start, prefix: str, reps: int) -> list:
    samples = []
    for _ in range(reps):
        t0 = time.monotonic()
        pid, stop, _ = start()
        samples.append(wait_named(pid, prefix, t0))
        stop()
    return samples


def importtime(start, prefix: str) -> str:
    """The child's -X importtime lines (whatever it printed to its stderr: ours until it
    redirects fd 2, its pipe after)."""
    import tempfile
    from pathlib import Path

    log = Path(tempfile.mkdtemp()) / "stderr"
    saved = os.dup(2)
    with open(log, "wb") as out:
        os.dup2(out.fileno(), 2)
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
    try:
        t0 = time.monotonic()
        pid, stop, running = start()
        wait_named(pid, prefix, t0)
        time.sleep(1.0)  # the worker's own imports, after it named itself
        piped = b""
        if running is not None:
            try:
                piped = os.read(running.stderr_fd, 1 << 20)
            except BlockingIOError:
                pass
        stop()
    finally:
        del os.environ["PYTHONPROFILEIMPORTTIME"]
        os.dup2(saved, 2)
        os.close(saved)
    return log.read_text() + piped.decode(errors="replace")


def summary(text: str, top: int) -> str:
    rows = []
    total = 0
    for line in text.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, self_us, cumulative, name = line.split("|")[0], *line.split("|")
        self_us = int(line.split("|")[0].split(":")[1])
        total += self_us
        rows.append((int(cumulative), self_us, name.rstrip()))
    modules = len(rows)
    rows.sort(reverse=True)
    out = [f"{modules} modules imported, {total / 1000:.1f} ms of import time in all (self times summed)",
           "", "| cumulative ms | self ms | module |", "|---:|---:|---|"]
    out += [f"| {c / 1000:.1f} | {s / 1000:.1f} | `{n.strip()}` {'(nested)' if n.startswith('   ') else ''}|"
            for c, s, n in rows[:top]]
    return "\n".join(out)


def main(argv) -> int:
    import argparse
    import statistics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--only", choices=["orch", "bare"], default=None)
    args = parser.parse_args(argv)
    contenders = [("bare", bare_start(), "bare-leaf"), ("orch", orch_start(), "orch w0")]
    for name, start, prefix in contenders:
        if args.only and name != args.only:
            continue
        latencies(start, prefix, 2)  # warm up (the resource tracker starts on the first)
        samples = sorted(latencies(start, prefix, args.reps))
        print(f"{name}: start() to the child named {prefix!r}: median {statistics.median(samples) * 1000:.1f} ms, "
              f"min {samples[0] * 1000:.1f}, max {samples[-1] * 1000:.1f} ({args.reps} starts)", flush=True)
    for name, start, prefix in contenders:
        if args.only and name != args.only:
            continue
        print(f"\n### {name}: python -X importtime of the spawned child\n")
        print(summary(importtime(start, prefix), args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
