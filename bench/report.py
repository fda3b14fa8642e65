"""Results out: medians and ratios per figure, the targets, RESULTS.md, results.json and the plot."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

BENCH = Path(__file__).resolve().parent
REFERENCE = "bare"

# key, title, unit, scale, ratio to bare is meaningful
FIGURES = [
    ("bringup_s", "1. Bring-up: manager start to all N leaves alive", "ms", 1000, True),
    ("restart_p50_s", "2a. Restart latency p50: SIGKILL one leaf to its replacement alive", "ms", 1000, True),
    ("restart_p95_s", "2b. Restart latency p95", "ms", 1000, True),
    ("restart_max_s", "2c. Restart latency max", "ms", 1000, True),
    ("restart_kills", "2d. Kills behind the restart percentiles (all repetitions)", "kills", 1, False),
    ("storm_s", "3. Restart storm: SIGKILL all N leaves at once to all N back", "ms", 1000, True),
    ("idle_cpu_pct", "4. Idle CPU of the manager process(es), % of one core", "%", 1, False),
    ("manager_rss_mib", "5a. Manager RSS (the process started)", "MiB", 1, True),
    ("root_rss_mib", "5a'. Root RSS (orch: the tree's root, below its guardian; others: the manager)", "MiB", 1, True),
    ("managers_rss_mib", "5b. RSS of every non-leaf process (supervisors, helpers)", "MiB", 1, True),
    ("tree_uss_mib", "5c. Total USS of the tree (manager(s) + leaves)", "MiB", 1, True),
    ("leaf_uss_mib", "5d. USS per leaf (mean over the leaves)", "MiB", 1, True),
    ("leaf_mem_mib", "5e. Machine memory per leaf: the fall of MemAvailable over bring-up, / N", "MiB", 1, True),
    ("teardown_s", "6. Teardown: stop command to the last leaf gone", "ms", 1000, True),
    ("tree_json_s", "7. `orch tree --json`: the whole CLI call, median of several", "ms", 1000, False),
    ("orphans", "8a. Orphans: leaves still alive after SIGKILL of the manager, once none has exited for 2 s",
     "leaves", 1, False),
    ("orphans_gone_s", "8b. SIGKILL of the manager to its last leaf gone (when none is left behind)", "ms", 1000, False),
]
STOP_COMMANDS = {"bare": "SIGTERM to the manager", "supervisord": "`supervisorctl shutdown`",
                 "circus": "`circusctl quit`", "pm2": "SIGTERM to pm2-runtime"}
# Sections of RESULTS.md written by other scripts (bench/health_idle.py, bench/logs_flood.py, by hand):
# a run of this one keeps them as they are, after its own.
KEPT_SECTIONS = ("## Memory limit checks", "## Logs: flood throughput")
# The scale run (run.py --scale, or after the main run) writes OUT/scale/; the main RESULTS.md shows it.
SCALE_FIGURES = ["bringup_s", "restart_p50_s", "storm_s", "teardown_s", "idle_cpu_pct", "root_rss_mib",
                 "managers_rss_mib", "leaf_uss_mib", "leaf_mem_mib", "tree_json_s", "orphans", "orphans_gone_s"]


def machine() -> Dict[str, object]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    versions = {}
    for dist in ("orch", "supervisor", "circus", "psutil"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "orch_commit": _commit(),
            "orch_source_at_start": source_fingerprint(),
            "python": platform.python_version(), "memory_gib": round(memory, 1), "versions": versions,
            "loadavg_at_start": os.getloadavg()}


def _commit() -> str:
    """The commit of orch under test, marked dirty when orchestrator/ has uncommitted changes."""
    git = ["git", "-C", str(BENCH.parent)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "orchestrator", "plugins"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "?"


def source_fingerprint() -> str:
    """A hash of orch's source as it is on disk (bench/.venv reinstalls orch when it changes)."""
    import hashlib

    digest = hashlib.sha256()
    for folder in ("orchestrator", "plugins"):
        top = BENCH.parent / folder
        for path in sorted(top.rglob("*.py")):  # every subpackage: the engine is in orchestrator/engine/
            digest.update(str(path.relative_to(top)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def summarize(runs: List[dict]) -> Dict[str, Dict[int, Dict[str, float]]]:
    """contender -> N -> figure -> median over the repetitions; restart percentiles are
    taken over the kills of every repetition pooled."""
    grouped: Dict[tuple, List[dict]] = {}
    for run in runs:
        grouped.setdefault((run["contender"], run["n"]), []).append(run["figures"])
    summary: Dict[str, Dict[int, Dict[str, float]]] = {}
    for (name, n), reps in grouped.items():
        keys = {key for figures in reps for key, value in figures.items() if not isinstance(value, list)}
        summary.setdefault(name, {})[n] = {
            key: statistics.median(figures[key] for figures in reps if key in figures) for key in sorted(keys)}
        summary[name][n]["reps"] = len(reps)
        pooled = sorted(sample for figures in reps for sample in figures.get("restart_samples_s", []))
        if pooled:
            summary[name][n].update(restart_p50_s=statistics.median(pooled), restart_p95_s=percentile(pooled, 95),
                                    restart_max_s=pooled[-1], restart_kills=len(pooled))
    return summary


def percentile(ordered: List[float], pct: int) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[pct - 1]


def reference(name: str) -> str:
    """The bare loop a contender is compared with: bare-spawn for orch-spawn, bare for the rest."""
    from contenders import BY_NAME

    contender = BY_NAME.get(name)
    return contender.reference if contender is not None else REFERENCE


def ratio(summary, name: str, n: int, key: str, against: Optional[str] = None) -> Optional[float]:
    try:
        ours, bare = summary[name][n][key], summary[against or reference(name)][n][key]
    except KeyError:
        return None
    return ours / bare if bare else None


# ----- targets -------------------------------------------------------------------


def targets(summary, sizes: List[int]) -> List[dict]:
    """Each product target for each orch contender: measured value, limit, held or not."""
    big = max(sizes)
    rows: List[dict] = []
    orchs = [name for name in summary if name.startswith("orch")]

    def add(text, name, n, key, limit, relative=True, strict=False):
        value = summary.get(name, {}).get(n, {}).get(key)
        measured = ratio(summary, name, n, key) if relative else value
        held = None if measured is None else (measured < limit if strict else measured <= limit)
        rows.append({"target": text, "contender": name, "n": n, "measured": measured,
                     "relative": relative, "held": held, "against": reference(name) if relative else None})

    issue13 = [n for n in sizes if n >= 100]  # issue #13: "at N=100 and N=1000"
    for name in orchs:
        for n in sizes:
            add("restart p50 <= 2x bare p50", name, n, "restart_p50_s", 2.0)
            add("restart p95 < 3x bare p95", name, n, "restart_p95_s", 3.0, strict=True)
        for n in issue13:
            if name == "orch-spawn":
                add("spawn: restart p50 <= 1.3x bare-spawn", name, n, "restart_p50_s", 1.3)
                add("spawn: bring-up <= 1.5x bare-spawn", name, n, "bringup_s", 1.5)
                add("spawn: USS per leaf <= 1.3x bare-spawn", name, n, "leaf_uss_mib", 1.3)
            elif name == "orch-fork":
                add("fork: restart p50 <= 1.25x bare", name, n, "restart_p50_s", 1.25)
    for name in orchs:
        if name != "orch-spawn":
            add(f"bring-up at N={big} (fork) <= 1.5x bare", name, big, "bringup_s", 1.5)
        add(f"idle CPU at N={big} < 0.5% of a core", name, big, "idle_cpu_pct", 0.5, False, True)
        add(f"storm at N={big} <= 3x bare", name, big, "storm_s", 3.0)
        add(f"teardown at N={big} <= 3x bare", name, big, "teardown_s", 3.0)
        json_limit = 0.1 if big <= 1000 else 0.3  # issue #13: 100 ms at N=1000, 300 ms at N=5000
        add(f"`orch tree --json` at N={big} <= {json_limit * 1000:.0f} ms", name, big, "tree_json_s", json_limit,
            False)
        if name != "orch-spawn":
            add(f"USS per leaf at N={big} <= 1.25x bare", name, big, "leaf_uss_mib", 1.25)
        for n in sizes:
            add("0 orphans after SIGKILL of the manager", name, n, "orphans", 0, False)
    return rows


# ----- Markdown ----------------------------------------------------------------------


def _cell(summary, name: str, n: int, key: str, scale: float, with_ratio: bool, skipped) -> str:
    value = summary.get(name, {}).get(n, {}).get(key)
    if value is None:
        return "skipped" if (name, n) in skipped else "–"
    text = f"{value:.0f}" if key in ("orphans", "restart_kills") else f"{value * scale:.3g}" if value * scale < 100 else f"{value * scale:.0f}"
    factor = ratio(summary, name, n, key) if with_ratio and name != REFERENCE else None
    return f"{text} ({factor:.2f}x)" if factor is not None else text


def _load(values) -> str:
    return "/".join(f"{value:.2f}" for value in values) if values else "?"


def figure_tables(summary, sizes, names, skipped) -> List[str]:
    lines = []
    for key, title, unit, scale, with_ratio in FIGURES:
        rows = [name for name in names if key != "tree_json_s" or name.startswith("orch")]
        lines += [f"### {title}", "", "| contender | " + " | ".join(f"N={n} ({unit})" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for name in rows:
            cells = [_cell(summary, name, n, key, scale, with_ratio, skipped) for n in sizes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def target_lines(rows: List[dict]) -> List[str]:
    lines = ["| target | contender | N | measured | held |", "|---|---|---:|---:|---|"]
    for row in rows:
        measured = row["measured"]
        if measured is None:
            shown, held = "not measured", "–"
        else:
            shown = (f"{measured:.2f}x {row.get('against') or REFERENCE}" if row["relative"]
                     else _absolute(row["target"], measured))
            held = "yes" if row["held"] else "**NO**"
        lines.append(f"| {row['target']} | {row['contender']} | {row['n']} | {shown} | {held} |")
    return lines


def _absolute(target: str, value: float) -> str:
    if "json" in target:
        return f"{value * 1000:.0f} ms"
    if "CPU" in target:
        return f"{value:.3f}%"
    return f"{value:.0f}"


def profile_lines(profile: Optional[dict]) -> List[str]:
    if not profile:
        return ["(not run: --quick, --no-profile, or orch-fork not among the contenders)"]
    lines = [profile.get("note", ""), ""]
    for phase in profile.get("phases", []):
        lines += [f"**{phase['title']}**: {phase['samples']} samples, busy (not waiting in "
                  f"select/poll/sleep) in {phase.get('busy_pct', 0):.0f}%", "",
                  "| % of busy samples (inclusive) | function |", "|---:|---|"]
        lines += [f"| {pct:.1f} | `{frame}` |" for frame, pct in phase["inclusive"]]
        lines += ["", "| % of all samples (self) | function |", "|---:|---|"]
        lines += [f"| {pct:.1f} | `{frame}` |" for frame, pct in phase["self"]]
        lines.append("")
    return lines


def markdown(results: dict, summary, rows: List[dict], scale: Optional[dict] = None, main: bool = True) -> str:
    settings, info = results["settings"], results["machine"]
    sizes, names = settings["sizes"], settings["contenders"]
    skipped = {(item["contender"], item["n"]): item["reason"] for item in results["skipped"]}
    date = datetime.datetime.fromtimestamp(results["started"]).strftime("%Y-%m-%d %H:%M")
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    changed = info.get("orch_source_at_end") != info.get("orch_source_at_start")
    warning = ([f"**Warning: orch's source changed during this run (fingerprint {info.get('orch_source_at_start')} "
                f"at the start, {info.get('orch_source_at_end')} at the end); runs measured different code.**", ""]
               if changed else [])
    lines = [
        "# orch benchmark results", "", *warning,
        "Generated by `python3 bench/run.py` (see bench/README.md); overwritten by every run.", "",
        f"- date: {date}, run time {results['duration_s'] / 60:.1f} min",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, kernel {info['kernel']}, "
        f"Python {info['python']}",
        f"- versions: {versions}; orch at commit {info.get('orch_commit', '?')} (source fingerprint "
        f"{info.get('orch_source_at_start')}, unchanged during the run: {'no' if changed else 'yes'})",
        f"- load average (1, 5, 15 min) at start {_load(info['loadavg_at_start'])}, at the end "
        f"{_load(info.get('loadavg_at_end'))} (anything else running on the machine shows here)",
        f"- settings: N = {', '.join(map(str, sizes))}; {settings['reps']} repetitions "
        f"({settings['reps_large']} at N >= 1000), contender order rotated each repetition; up to "
        f"{settings['kills']} single-leaf kills per run within {settings['restart_budget']:g} s (restart "
        f"percentiles pool the kills of all repetitions; the `kills` row says how many); idle window "
        f"{settings['idle']:g} s after {settings['settle']:g} s of settling; orphans counted once per "
        f"contender and N (first repetition): leaves alive once none has exited for {settings['grace']:g} s after "
        f"the manager's SIGKILL",
        "- every cell is the median over the repetitions; `(1.23x)` is the ratio to the bare loop of the same "
        "start method at the same N: `bare-spawn` for orch-spawn, `bare` (fork) for every other contender "
        "(bare-spawn's own ratio is to bare)",
        "- stop commands: " + "; ".join(f"{k}: {v}" for k, v in STOP_COMMANDS.items()) + "; orch: `orch down`",
        "",
    ]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {c} at N={n}: {r}" for (c, n), r in sorted(skipped.items())] + [""]
    lines += ["## Targets", ""] + target_lines(rows) + [""]
    lines += ["## Figures", "", "![restart p50 and bring-up vs N](restart_bringup.png)", ""]
    lines += figure_tables(summary, sizes, names, skipped)
    if scale is not None:
        lines += scale_lines(scale)
    lines += ["## Profile of orch", ""] + profile_lines(results.get("profile"))
    analysis = BENCH / "analysis.md"
    if analysis.exists() and main:  # the scale run's own report has no analysis
        lines += ["", analysis.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def scale_lines(scale: dict) -> List[str]:
    """The scale run: each figure at every N, and how it grew from one N to the next."""
    summary = summarize(scale["runs"])
    sizes, names = scale["settings"]["sizes"], scale["settings"]["contenders"]
    skipped = {(item["contender"], item["n"]): item["reason"] for item in scale["skipped"]}
    info = scale["machine"]
    date = datetime.datetime.fromtimestamp(scale["started"]).strftime("%Y-%m-%d %H:%M")
    lines = ["## Scale: up to 5000 workers", "",
             f"From `python3 bench/run.py --scale` (or the tail of the full run), {date}, load average at start "
             f"{_load(info['loadavg_at_start'])}, at the end {_load(info.get('loadavg_at_end'))}; "
             f"{scale['settings']['reps']} repetition, up to {scale['settings']['kills']} kills. `orch-tree100` "
             "is 3 levels: N/100 supervisors of 100 workers (50 x 100 at N=5000). The `growth` columns are "
             "the figure's ratio between two sizes divided by the ratio of the sizes: about 1 means linear, "
             "clearly above 1 faster than linear.", ""]
    rows = targets(summary, sizes)
    big = max(sizes)
    lines += target_lines([row for row in rows if row["n"] == big and "restart p" not in row["target"]]) + [""]
    for key, title, unit, scale_by, with_ratio in FIGURES:
        if key not in SCALE_FIGURES:
            continue
        growth = [(a, b) for a, b in zip(sizes, sizes[1:])]
        lines += [f"### {title}", "", "| contender | " + " | ".join(f"N={n} ({unit})" for n in sizes)
                  + "".join(f" | growth {a}->{b}" for a, b in growth) + " |",
                  "|---|" + "---:|" * (len(sizes) + len(growth))]
        for name in names:
            if key == "tree_json_s" and not name.startswith("orch"):
                continue
            cells = [_cell(summary, name, n, key, scale_by, with_ratio, skipped) for n in sizes]
            for a, b in growth:
                va, vb = (summary.get(name, {}).get(n, {}).get(key) for n in (a, b))
                cells.append(f"{vb / va / (b / a):.2f}" if va and vb else "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# ----- plot ------------------------------------------------------------------------


def plot(summary, sizes: List[int], names: List[str], path: Path) -> Optional[str]:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed; no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for axis, (key, title) in zip(axes, [("restart_p50_s", "Restart latency p50 (one leaf SIGKILLed)"),
                                         ("bringup_s", "Bring-up: manager start to all N leaves alive")]):
        for name in names:
            points = [(n, summary[name][n][key] * 1000) for n in sizes if key in summary.get(name, {}).get(n, {})]
            if points:
                axis.plot(*zip(*points), marker="o", label=name, linewidth=2 if name == REFERENCE else 1.5,
                          linestyle="--" if name == REFERENCE else "-")
        axis.set(xscale="log", yscale="log", xlabel="N leaves", ylabel="milliseconds (median)", title=title)
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_all(results: dict, out: Path, finished: bool = True) -> None:
    """finished: the run just ended (record the end state); False re-renders stored results."""
    if finished:  # kept if run.measure recorded them when the main run ended, before the scale run
        results["machine"].setdefault("loadavg_at_end", os.getloadavg())
        results["machine"].setdefault("orch_source_at_end", source_fingerprint())
    summary = summarize(results["runs"])
    rows = targets(summary, results["settings"]["sizes"])
    results["summary"] = {name: {str(n): figures for n, figures in by_n.items()} for name, by_n in summary.items()}
    results["targets"] = rows
    note = plot(summary, results["settings"]["sizes"], results["settings"]["contenders"], out / "restart_bringup.png")
    if note:
        print(note)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    scale_json = out / "scale" / "results.json"
    scale = json.loads(scale_json.read_text()) if scale_json.exists() and out.name != "scale" else None
    text = markdown(results, summary, rows, scale, main=out.name != "scale")
    (out / "RESULTS.md").write_text(text + kept_sections(out / "RESULTS.md"))


def kept_sections(path: Path) -> str:
    """What RESULTS.md holds from other scripts (KEPT_SECTIONS onwards), to carry over."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    starts = [old.find(f"\n{heading}") for heading in KEPT_SECTIONS]
    starts = [at for at in starts if at >= 0]
    return "\n" + old[min(starts) + 1:] if starts else ""
