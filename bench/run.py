"""Benchmark entry point: set up bench/.venv, run every contender at every size, write the results.

    python3 bench/run.py                 # everything, as in RESULTS.md (then the scale run)
    python3 bench/run.py --scale         # only the scale run: N = 1000, 2500, 5000 (bench/scale/)
    python3 bench/run.py --quick --no-venv --contenders bare,orch-fork --out /tmp/x
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
sys.path.insert(0, str(BENCH))


@dataclass
class Settings:
    sizes: List[int]
    reps: int
    kills: int
    idle: float  # seconds of steady state for the idle CPU figure
    settle: float  # pause after bring-up and between phases
    grace: float  # after the manager's SIGKILL, orphans are counted once no leaf has exited for this long
    json_calls: int
    reps_large: int  # repetitions at N >= 1000
    restart_budget: float  # seconds per run for the single-leaf kills
    kill_timeout: float = 15.0
    seed: int = 1
    contenders: List[str] = field(default_factory=list)

    def timeout(self, n: int) -> float:
        """For bring-up, storm and teardown: generous, and growing with N."""
        return 30.0 + 0.25 * n


def parse_args(argv: List[str]) -> argparse.Namespace:
    from contenders import BY_NAME, DEFAULT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated N (default 10,100,1000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--reps-large", type=int, default=2, help="repetitions at N >= 1000 (default 2)")
    parser.add_argument("--kills", type=int, default=30, help="single-leaf kills per run (default 30)")
    parser.add_argument("--restart-budget", type=float, default=50.0,
                        help="seconds per run for those kills; slow restarters do fewer (default 50)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle CPU window in seconds (default 10)")
    parser.add_argument("--contenders", default=None,
                        help=f"comma-separated subset of {', '.join(BY_NAME)} (default {','.join(DEFAULT)}; "
                             f"with --scale {','.join(SCALE_CONTENDERS)})")
    parser.add_argument("--scale", action="store_true",
                        help=f"only the scale run: N = {','.join(map(str, SCALE_SIZES))} (flat tree and "
                             "supervisors of 100), 1 rep, 10 kills, no profile; writes OUT/scale/")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale run after the main one")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N=5, 1 rep, 3 kills, 1 s idle window, no profile")
    parser.add_argument("--no-venv", action="store_true",
                        help="use this interpreter as it is instead of creating bench/.venv")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of orch")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md and the plot from OUT/results.json")
    parser.add_argument("--out", type=Path, default=BENCH,
                        help="directory for RESULTS.md, results.json and the plot (default bench/)")
    args = parser.parse_args(argv)
    if args.contenders is None:
        args.contenders = ",".join(SCALE_CONTENDERS if args.scale else DEFAULT)
    unknown = [name for name in args.contenders.split(",") if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return args


# The scale run: a flat tree and a 3-level one (supervisors of 100 workers) against bare, up to
# 5000 leaves, to show how each figure grows with N.
SCALE_SIZES = [1000, 2500, 5000]
SCALE_CONTENDERS = ["bare", "orch-fork", "orch-tree100"]


def scale_settings(contenders: List[str]) -> Settings:
    return Settings(SCALE_SIZES, 1, 10, 10.0, 1.0, 2.0, 5, 1, 20.0, contenders=contenders)


def settings_from(args: argparse.Namespace) -> Settings:
    contenders = args.contenders.split(",")
    if args.scale:
        return scale_settings(contenders)
    if args.quick:
        return Settings([5], 1, 3, 1.0, 0.3, 1.0, 2, 1, 10.0, contenders=contenders)
    sizes = [int(size) for size in args.sizes.split(",")]
    return Settings(sizes, args.reps, args.kills, args.idle, 1.0, 2.0, 5, args.reps_large,
                    args.restart_budget, contenders=contenders)


# ----- environment --------------------------------------------------------------


def ensure_venv(argv: List[str]) -> None:
    """Re-run this script inside bench/.venv, made and filled first if needed (logs_flood.py's way)."""
    from logs_flood import ensure_venv as ensure_bench_venv

    ensure_bench_venv(argv, Path(__file__))


def prepare_process() -> None:
    """Become a subreaper (orphans of a killed manager stay ours to clean up), lift the fd
    limit, and keep the kernel's OOM killer off this process: a contender that outgrows
    the machine loses its leaves (figures.bring_up makes them the first choice) and is
    reported as failed, instead of the harness dying with every sample it holds."""
    from figures import set_oom_score

    set_oom_score(-1000)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ----- running ----------------------------------------------------------------------


def run_one(contender, n: int, settings: Settings, rng: random.Random, orphans: bool) -> Dict[str, object]:
    """Every figure of one contender at one size: a measured run, then (first repetition
    only: it is a count, not a timing) an orphan run."""
    import psutil

    import figures as fig

    workdir = Path(tempfile.mkdtemp(prefix=f"ob-{contender.name}-{n}-"))
    result: Dict[str, object] = {}
    try:
        available = psutil.virtual_memory().available
        manager, result["bringup_s"] = start(contender, n, workdir / "a", settings)
        time.sleep(settings.settle)
        # What the machine gave each leaf, page tables and the manager's copied pages
        # included: more than the leaves' USS, and what the memory guard must budget.
        result["leaf_mem_mib"] = (available - psutil.virtual_memory().available) / n / 1024**2
        result["idle_cpu_pct"] = fig.idle_cpu(manager, settings.idle)
        result.update(fig.memory(manager))
        if manager.launch.tree_json:
            result["tree_json_s"] = fig.tree_json(manager, settings.json_calls, n)
        result.update(restart_stats(fig.restart_latencies(manager, settings.kills, rng, settings.kill_timeout,
                                                          settings.restart_budget)))
        time.sleep(settings.settle)
        result["storm_s"] = fig.storm(manager, n, settings.timeout(n))
        time.sleep(settings.settle)
        result["teardown_s"] = fig.teardown(manager, settings.timeout(n))
        fig.cleanup()
        if orphans:
            manager, _ = start(contender, n, workdir / "b", settings)
            time.sleep(settings.settle)
            result["orphans"], gone_s = fig.orphans(manager, settings.grace, settings.timeout(n))
            if not result["orphans"]:
                result["orphans_gone_s"] = gone_s
    except Exception as error:  # any failure of the contender, reported and skipped, never fatal
        detail = str(error) if isinstance(error, fig.Failed) else f"{type(error).__name__}: {error}"
        raise fig.Failed(f"{detail} (logs kept in {workdir})") from None
    finally:
        fig.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)  # kept above when the contender failed
    return result


def start(contender, n: int, workdir: Path, settings: Settings):
    import figures as fig

    workdir.mkdir(parents=True)
    launch = contender.launch(workdir, n, dict(os.environ))
    return fig.bring_up(launch, n, workdir / "manager.log", settings.timeout(n))


def restart_stats(samples: List[float]) -> Dict[str, object]:
    from report import percentile

    ordered = sorted(samples)
    return {"restart_p50_s": statistics.median(ordered), "restart_p95_s": percentile(ordered, 95),
            "restart_max_s": ordered[-1], "restart_samples_s": samples}


def memory_reason(contender: str, n: int, runs: List[dict]) -> Optional[str]:
    """Skip a size the machine cannot hold, predicted from a smaller size of the same contender
    by the memory each leaf took from the machine there (or its USS, if that is larger)."""
    import psutil

    smaller = [run for run in runs if run["contender"] == contender and run["n"] < n and run.get("figures")]
    if not smaller:
        return None
    last = max(smaller, key=lambda run: run["n"])["figures"]
    per_leaf = max(last["leaf_uss_mib"], last.get("leaf_mem_mib", 0.0))
    need = per_leaf * n * 1.15 / 1024
    available = psutil.virtual_memory().available / 1024**3
    if need > 0.9 * available:
        return f"needs about {need:.1f} GiB for {n} leaves ({per_leaf:.1f} MiB each), {available:.1f} GiB available"
    return None


def run_all(settings: Settings) -> dict:
    import figures as fig
    from contenders import BY_NAME

    rng = random.Random(settings.seed)
    runs: List[dict] = []
    skipped: Dict[tuple, str] = {}
    for name in settings.contenders:
        reason = BY_NAME[name].missing()
        for n in settings.sizes if reason else ():
            skipped[(name, n)] = reason
    for rep in range(settings.reps):
        order = settings.contenders[rep % len(settings.contenders):] + settings.contenders[:rep % len(settings.contenders)]
        for n in settings.sizes:
            for name in order:
                if (name, n) in skipped or (n >= 1000 and rep >= settings.reps_large):
                    continue
                reason = memory_reason(name, n, runs)
                if reason:
                    skipped[(name, n)] = reason
                    print(f"skip {name} N={n}: {reason}", flush=True)
                    continue
                started = time.monotonic()
                try:
                    figures = run_one(BY_NAME[name], n, settings, rng, orphans=rep == 0)
                except fig.Failed as error:
                    for size in (s for s in settings.sizes if s >= n):
                        skipped.setdefault((name, size), f"failed at N={n} in rep {rep + 1}: {error}")
                    print(f"FAILED {name} N={n} rep {rep + 1}: {error}", flush=True)
                    continue
                runs.append({"contender": name, "n": n, "rep": rep + 1, "figures": figures})
                print(progress_line(name, n, rep, figures, time.monotonic() - started), flush=True)
    return {"runs": runs, "skipped": [{"contender": c, "n": n, "reason": r} for (c, n), r in skipped.items()]}


def progress_line(name: str, n: int, rep: int, figures: dict, took: float) -> str:
    ms = lambda key: f"{figures[key] * 1000:.1f}ms"
    return (f"rep {rep + 1} N={n:<5} {name:<12} bring-up {ms('bringup_s')}  restart p50 {ms('restart_p50_s')}"
            f"  storm {ms('storm_s')}  teardown {ms('teardown_s')}  idle {figures['idle_cpu_pct']:.2f}%"
            f"  leaf USS {figures['leaf_uss_mib']:.2f}MiB  orphans {figures.get('orphans', '-')}  ({took:.0f}s)")


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if not args.no_venv:
        ensure_venv(argv)
    import report

    if args.report_only:
        report.write_all(json.loads((args.out / "results.json").read_text()), args.out, finished=False)
        return 0
    prepare_process()

    settings = settings_from(args)
    if args.scale:
        measure(settings, args.out / "scale", profile=False)
        return 0
    measure(settings, args.out, profile=not (args.quick or args.no_profile), after=None if (
        args.quick or args.no_scale) else lambda: measure(scale_settings(SCALE_CONTENDERS), args.out / "scale",
                                                          profile=False))
    return 0


def measure(settings: Settings, out: Path, profile: bool, after=None) -> None:
    """One run of `settings` into `out` (RESULTS.md, results.json, the plot); `after` (the scale
    run) is measured before the report is written, so RESULTS.md shows both."""
    import report

    started = time.time()
    print(f"running {', '.join(settings.contenders)} at N={settings.sizes}, {settings.reps} reps", flush=True)
    results = {"settings": asdict(settings), "machine": report.machine(), "started": started}
    results.update(run_all(settings))
    if profile and "orch-fork" in settings.contenders:
        import profile_orch

        results["profile"] = profile_orch.profile(max(settings.sizes), out / "profile", settings)
    results["duration_s"] = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    if after is not None:
        # Kept before the scale run starts: if that run dies (the 2026-12-02 06:08 run's
        # harness was killed at N=5000 when the machine ran out of memory), the main run's
        # samples survive and `--report-only` renders them.
        results["machine"].update(loadavg_at_end=os.getloadavg(), orch_source_at_end=report.source_fingerprint())
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        after()
    report.write_all(results, out)
    print(f"wrote {out / 'RESULTS.md'} in {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
