"""Log flood throughput: one worker writes N lines of 100 bytes as fast as it can; how long until
every line is in the contender's log file, and is every line there exactly once, in order?

    python3 bench/logs_flood.py                        # 1,000,000 lines, 3 runs each, every contender
    python3 bench/logs_flood.py --lines 20000 --reps 1 --contenders redirect,orch --no-venv

Contenders, side by side in one run (the contender order rotates every repetition):

  redirect     `python writer.py > file`: the limit
  orch         `orch up --detach` of a tree with `[log] dir`, `max_bytes = 0` and one `orch.exec`
               worker running the writer; its file is `<dir>/flood.log`, records `<ts> stdout <pid> | <line>`
  orch-rotate  the same with `max_bytes` = 10 MiB (rotation by rename to flood.log.1..N; backups = 5
               would drop most of the flood, so all files are checked and enough are kept)
  supervisord  `supervisord -n`, one program, `stdout_logfile` with `stdout_logfile_maxbytes = 0`
  circus       `circusd`, one watcher, `stdout_stream.class = FileStream`, `max_bytes = 0`
  pm2          `pm2 start` of an app file (`out_file`, no `--time` prefix, autorestart off),
               installed with npm into bench/.venv/pm2 where npm exists; skipped with a note otherwise

The writer (the same script for every contender) builds its lines in memory first, says it is
ready in a stamp file and waits for the harness's SIGUSR1 (sent 0.2 s later, once the manager's CPU
baseline is read), then takes its clock (CLOCK_MONOTONIC, shared by every process here) and writes
1000 lines (100 kB) per `os.write` to its stdout, then idles (so no contender restarts it). The figure is that clock to the moment the
harness, polling the file's size every 2 ms, sees the last line at its end. Off the clock, the
whole file is then checked: every payload (the text after `" | "` for orch) must be line 0..N-1
exactly once and in order.

It also measures, for orch only, the restart latency of a second worker (`orch.sleep`, SIGKILLed by
pid, until a new pid runs under the root, found through `/proc/sys/kernel/ns_last_pid` as
bench/figures.py does) in the same tree while the first worker floods without end, against the
same tree with the flooder idle.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
PM2_DIR = VENV / "pm2"
PM2_VERSION = "7.0.4"
sys.path.insert(0, str(BENCH))

LINE = 100  # bytes, newline included
FILL = (b"abcdefghijklmnopqrstuvwxyz" * 4)[:LINE - 11]  # line = 9 digits, a space, FILL, "\n"
CONTENDERS = ["redirect", "orch", "orch-rotate", "supervisord", "circus", "pm2"]
POLL = 0.002

WRITER = r'''
import os, select, signal, sys, time
lines, stamp, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
FILL = %r
CHUNK = 1000

def block(first, count):
    return b"".join([b"%%09d %%s\n" %% (i, FILL) for i in range(first, first + count)])

def write_all(data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(1, view):]
        except BlockingIOError:
            select.select([], [1], [])

def note(text):
    with open(stamp + ".tmp", "w") as handle:
        handle.write(text)
    os.rename(stamp + ".tmp", stamp)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
blocks = [block(first, min(CHUNK, lines - first)) for first in range(0, lines, CHUNK)]
note(f"{os.getpid()}\n")  # ready: the harness takes its baselines, then says go
signal.sigwait({signal.SIGUSR1})
start = time.monotonic()
note(f"{os.getpid()} {start!r}\n")
if mode == "loop":
    while True:
        for data in blocks:
            write_all(data)
for data in blocks:
    write_all(data)
note(f"{os.getpid()} {start!r} {time.monotonic()!r}\n")
while True:
    signal.pause()
''' % FILL


class Failed(Exception):
    """The contender did not start, stop or deliver."""


def expected(i: int) -> bytes:
    return b"%09d %s" % (i, FILL)


# ----- environment ------------------------------------------------------------------


def ensure_venv(argv: List[str], script: Optional[Path] = None) -> None:
    """Re-run this script inside bench/.venv (the one bench/run.py makes, same stamp), creating and
    filling it first if needed; also install PM2 into bench/.venv/pm2 with npm where npm exists.

    orch goes in as users install it, a built wheel with its bytecode compiled, and again
    whenever its source changed. An editable install would have every Python started
    from the venv (every contender's) import setuptools' path finder (~17 ms), and where
    PYTHONDONTWRITEBYTECODE is set, as on our bench machine, every orch process would
    compile its modules from source on each start: neither is what a user runs."""
    from report import source_fingerprint

    if Path(sys.prefix).resolve() != VENV.resolve():
        python = VENV / "bin" / "python"
        wanted = (BENCH / "requirements.txt").read_text() + (REPO / "pyproject.toml").read_text()
        stamp, orch_stamp = VENV / ".installed", VENV / ".installed-orch"
        if not python.exists():
            print(f"creating {VENV}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        if not stamp.exists() or stamp.read_text() != wanted:
            print("installing supervisor, circus, matplotlib and py-spy into it", flush=True)
            _pip(python, "-r", str(BENCH / "requirements.txt"))
            stamp.write_text(wanted)
            orch_stamp.unlink(missing_ok=True)
        source = source_fingerprint()
        if not orch_stamp.exists() or orch_stamp.read_text() != source:
            print(f"installing orch (source {source}) into it", flush=True)
            _pip(python, "--no-deps", "--force-reinstall", str(REPO))
            orch_stamp.write_text(source)
        install_pm2()
        target = (script or Path(__file__)).resolve()  # bench/run.py re-runs itself the same way
        os.execv(str(python), [str(python), str(target), *argv])


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pip install failed:\n{result.stdout}{result.stderr}")


def pm2_bin() -> Path:
    return PM2_DIR / "node_modules" / ".bin" / "pm2"


def install_pm2() -> None:
    if pm2_bin().exists() or not (shutil.which("npm") and shutil.which("node")):
        return
    print(f"installing pm2@{PM2_VERSION} into {PM2_DIR} with npm", flush=True)
    result = subprocess.run(["npm", "install", "--prefix", str(PM2_DIR), "--no-audit", "--no-fund",
                             f"pm2@{PM2_VERSION}"], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"npm install pm2 failed, pm2 will be skipped:\n{result.stdout[-800:]}{result.stderr[-800:]}")


def missing(name: str) -> Optional[str]:
    """Why this contender cannot run here, or None."""
    import importlib.util

    needs = {"orch": "orchestrator", "orch-rotate": "orchestrator", "supervisord": "supervisor", "circus": "circus"}.get(name)
    if needs and importlib.util.find_spec(needs) is None:
        return f"module {needs!r} is not installed in {sys.executable}"
    if name == "pm2":
        if not (shutil.which("node") and shutil.which("npm")):
            return "node/npm not found"
        if not pm2_bin().exists():
            return f"{pm2_bin()} not installed (run without --no-venv once, or npm install --prefix {PM2_DIR} pm2)"
    return None


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _toml(value: str) -> str:
    return json.dumps(value)  # an ASCII JSON string is a TOML basic string


# ----- the contenders ---------------------------------------------------------------


@dataclass
class Flood:
    """One contender started with the writer: where its lines end up, how to stop it."""

    log: Path
    prefixed: bool  # orch: `<ts> stdout <pid> | <line>` records
    stop: Callable[[], None]
    name: str = ""  # orch: the tree's name
    env: Dict[str, str] = field(default_factory=dict)  # orch: the CLI's environment


def _manager(argv: List[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise Failed(f"{what} exited {result.returncode}: {(result.stdout or '')[-600:]}{(result.stderr or '')[-600:]}")


def start_redirect(work: Path, argv: List[str], env: Dict[str, str]) -> Flood:
    log = work / "redirect.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def stop() -> None:
        proc.kill()
        proc.wait(30)

    return Flood(log, False, stop)


def orch_tree(name: str, logs: Path, argv: List[str], victim: bool, max_bytes: int = 0, backups: int = 5) -> str:
    lines = [f"name = {_toml(name)}", "max_restarts = 100000000", "within = 1.0", "",
             "[log]", f"dir = {_toml(str(logs))}", f"max_bytes = {max_bytes}", f"backups = {backups}", "",
             "[[children]]", 'name = "flood"', 'worker = "orch.exec"',
             f"args = {{ argv = [{', '.join(_toml(arg) for arg in argv)}] }}", ""]
    if victim:
        lines += ["[[children]]", 'name = "victim"', 'worker = "orch.sleep"', 'restart = "always"',
                  "backoff = 0.0", ""]
    return "\n".join(lines)


def orch_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def start_orch(work: Path, argv: List[str], env: Dict[str, str], victim: bool = False,
               max_bytes: int = 0, backups: int = 5) -> Flood:
    name = f"flood-{os.getpid()}-{work.name}"
    tree = work / "tree.toml"
    tree.write_text(orch_tree(name, work / "logs", argv, victim, max_bytes, backups))
    env = dict(env, ORCH_RUN_DIR=str(work / "run"))
    _check(subprocess.run(orch_cmd("up", "--detach", str(tree)), env=env, capture_output=True, text=True,
                          timeout=120), "orch up --detach")

    def stop() -> None:
        _check(subprocess.run(orch_cmd("down", name), env=env, capture_output=True, text=True, timeout=120),
               "orch down")

    return Flood(work / "logs" / "flood.log", True, stop, name=name, env=env)


ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_BACKUPS_MAX = 1000


def start_orch_rotate(work: Path, argv: List[str], env: Dict[str, str]) -> Flood:
    """orch with rotation on (10 MiB files, as many backups as the flood needs: nothing dropped)."""
    lines = int(argv[2])
    backups = min(ROTATE_BACKUPS_MAX, lines * (LINE + 60) // ROTATE_BYTES + 2)
    return start_orch(work, argv, env, max_bytes=ROTATE_BYTES, backups=backups)


def rotated_files(log: Path) -> List[Path]:
    """`log.N` .. `log.1`, then `log`: the order orch's rotation by rename leaves them in."""
    numbered = sorted((int(path.name.rpartition(".")[2]), path) for path in log.parent.glob(log.name + ".*")
                      if path.name.rpartition(".")[2].isdigit())
    return [path for _, path in reversed(numbered)] + [log]


SUPERVISORD_CONF = """\
[unix_http_server]
file = {dir}/supervisor.sock

[supervisord]
logfile = {dir}/supervisord.log
pidfile = {dir}/supervisord.pid
childlogdir = {dir}
loglevel = warn
nodaemon = true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{dir}/supervisor.sock

[program:flood]
command = {command}
autorestart = false
startsecs = 0
stdout_logfile = {log}
stdout_logfile_maxbytes = 0
stdout_logfile_backups = 0
stderr_logfile = {dir}/flood.err
stderr_logfile_maxbytes = 0
stderr_logfile_backups = 0
"""


def start_supervisord(work: Path, argv: List[str], env: Dict[str, str]) -> Flood:
    log, conf = work / "supervisord-flood.log", work / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(dir=work, command=" ".join(argv), log=log))
    proc = _manager([_bin("supervisord"), "-n", "-c", str(conf)], env, work / "manager.log")

    def stop() -> None:
        _check(subprocess.run([_bin("supervisorctl"), "-c", str(conf), "shutdown"], env=env, capture_output=True,
                              text=True, timeout=60), "supervisorctl shutdown")
        proc.wait(60)

    return Flood(log, False, stop)


CIRCUS_INI = """\
[circus]
endpoint = ipc://{dir}/endpoint.sock
pubsub_endpoint = ipc://{dir}/pubsub.sock
stats_endpoint = ipc://{dir}/stats.sock
logoutput = {dir}/circus.log
loglevel = warning

[watcher:flood]
cmd = {command}
numprocesses = 1
copy_env = true
stdout_stream.class = FileStream
stdout_stream.filename = {log}
stdout_stream.max_bytes = 0
stderr_stream.class = FileStream
stderr_stream.filename = {dir}/flood.err
"""


def start_circus(work: Path, argv: List[str], env: Dict[str, str]) -> Flood:
    log, ini = work / "circus-flood.log", work / "circus.ini"
    ini.write_text(CIRCUS_INI.format(dir=work, command=" ".join(argv), log=log))
    proc = _manager([_bin("circusd"), str(ini)], env, work / "manager.log")

    def stop() -> None:
        _check(subprocess.run([_bin("circusctl"), "--endpoint", f"ipc://{work}/endpoint.sock", "quit"], env=env,
                              capture_output=True, text=True, timeout=60), "circusctl quit")
        proc.wait(60)

    return Flood(log, False, stop)


def start_pm2(work: Path, argv: List[str], env: Dict[str, str]) -> Flood:
    log, app = work / "pm2-flood.log", work / "flood.json"
    app.write_text(json.dumps({"apps": [{
        "name": "flood", "script": argv[1], "interpreter": argv[0], "args": argv[2:], "exec_mode": "fork",
        "out_file": str(log), "error_file": str(work / "flood.err"), "merge_logs": True, "autorestart": False,
    }]}))
    env = dict(env, PM2_HOME=str(work / "pm2home"))
    _check(subprocess.run([str(pm2_bin()), "start", str(app)], env=env, capture_output=True, text=True, timeout=120),
           "pm2 start")

    def stop() -> None:
        _check(subprocess.run([str(pm2_bin()), "kill"], env=env, capture_output=True, text=True, timeout=60),
               "pm2 kill")

    return Flood(log, False, stop)


STARTERS = {"redirect": start_redirect, "orch": start_orch, "orch-rotate": start_orch_rotate,
            "supervisord": start_supervisord, "circus": start_circus, "pm2": start_pm2}


# ----- one run --------------------------------------------------------------------------


def read_stamp(stamp: Path) -> Optional[List[float]]:
    try:
        return [float(word) for word in stamp.read_text().split()]
    except (OSError, ValueError):
        return None


def tail(path: Path, size: int) -> bytes:
    """The last `size` bytes of `path` (fewer, or none, while a rotation renames and recreates it)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
            return handle.read(size)
    except FileNotFoundError:
        return b""


def descendants_cpu(exclude: int) -> float:
    """User + system CPU seconds of every descendant but `exclude` (the writer): the manager side.
    We are a child subreaper, so daemons (pm2's, orch's detached root) are our descendants too."""
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        if proc.pid == exclude:
            continue
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def process_cpu(pid: int) -> Optional[float]:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return None


def wait_ready(stamp: Path, timeout: float = 120.0) -> int:
    """The writer's pid, once it has built its lines and waits for the go (SIGUSR1)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = read_stamp(stamp)
        if ready:
            return int(ready[0])
        if time.monotonic() > deadline:
            raise Failed(f"the writer was not ready within {timeout:g}s")
        time.sleep(0.01)


def wait_delivered(flood: Flood, stamp: Path, lines: int, timeout: float, stall: float = 20.0) -> Dict[str, object]:
    """Say go to the writer, poll the log file until its last line is line N-1; the times and CPU
    figures of the run."""
    last = expected(lines - 1) + b"\n"
    writer = wait_ready(stamp)
    time.sleep(0.2)  # let the manager settle after starting it
    cpu0 = descendants_cpu(writer)
    os.kill(writer, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    size, changed = -2, time.monotonic()
    while True:
        now = time.monotonic()
        try:
            current = flood.log.stat().st_size
        except FileNotFoundError:
            current = -1
        if current != size:
            size, changed = current, now
            if current >= len(last) and tail(flood.log, len(last)) == last:
                now = time.monotonic()
                break
        if now - changed > stall or now > deadline:
            raise Failed(f"the last line never arrived: the file stayed at {max(size, 0)} bytes for "
                         f"{now - changed:.0f}s")
        time.sleep(POLL)
    result: Dict[str, object] = {"manager_cpu_s": descendants_cpu(writer) - cpu0, "writer_cpu_s": process_cpu(writer)}
    for _ in range(1000):  # the writer notes its end right after its last write
        done = read_stamp(stamp)
        if done and len(done) == 3:
            result["e2e_s"], result["writer_s"] = now - done[1], done[2] - done[1]
            return result
        time.sleep(0.01)
    raise Failed("the writer never noted the end of its writing")


def verify(paths: List[Path], lines: int, prefixed: bool) -> Dict[str, int]:
    """Every payload line 0..N-1 exactly once and in order (across `paths`, oldest first)?
    Counts of what is wrong."""
    data = b"".join(path.read_bytes() for path in paths if path.exists())
    records = data.split(b"\n")
    partial = records.pop()  # b"" when the file ends with a newline
    other = 0
    if prefixed:
        payloads = []
        for record in records:
            head, sep, payload = record.partition(b" | ")
            if sep and b" stdout " in head:
                payloads.append(payload)
            else:
                other += 1
    else:
        payloads = records
    want = [expected(i) for i in range(lines)]
    problems = {"records": len(payloads), "other_records": other, "partial_tail": int(bool(partial))}
    if payloads == want:
        return dict(problems, missing=0, duplicated=0, out_of_order=0, malformed=0)
    numbers, malformed = [], 0
    for payload in payloads:
        if len(payload) == LINE - 1 and payload[:9].isdigit() and payload == expected(int(payload[:9])):
            numbers.append(int(payload[:9]))
        else:
            malformed += 1
    seen = set(number for number in numbers if number < lines)
    return dict(problems, missing=lines - len(seen), duplicated=len(numbers) - len(set(numbers)),
                out_of_order=sum(1 for a, b in zip(numbers, numbers[1:]) if b <= a), malformed=malformed)


def writer_argv(work: Path, lines: int, mode: str) -> List[str]:
    script = work / "writer.py"
    script.write_text(WRITER)
    return [sys.executable, str(script), str(lines), str(work / "stamp"), mode]


def orch_root(flood: Flood) -> int:
    result = subprocess.run(orch_cmd("tree", flood.name, "--json"), env=flood.env, capture_output=True, text=True,
                            timeout=60)
    _check(result, "orch tree --json")
    return next(node["pid"] for node in json.loads(result.stdout) if node["path"] == "")


def start_profile(pid: int, out: Path) -> Optional[subprocess.Popen]:
    """py-spy (bench/.venv's, else on PATH) recording `pid`, idle frames included, as collapsed stacks."""
    spy = Path(sys.executable).parent / "py-spy"
    spy = spy if spy.exists() else Path(shutil.which("py-spy") or "")
    if not spy.name:
        print("no py-spy: --profile ignored", flush=True)
        return None
    proc = subprocess.Popen([str(spy), "record", "-p", str(pid), "--idle", "--nonblocking", "-r", "1000",
                             "--format", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return proc


def stop_profile(proc: Optional[subprocess.Popen], out: Path) -> None:
    """Stop py-spy (it writes its file on SIGINT) and print the hottest lines of the profile."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    leaf: Dict[str, int] = {}
    total = 0
    for record in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = record.rpartition(" ")
        total += int(count)
        frame = stack.rpartition(";")[2]
        leaf[frame] = leaf.get(frame, 0) + int(count)
    idle = sum(count for frame, count in leaf.items() if frame.startswith("EpollSelector.select"))
    busy = max(total - idle, 1)
    print(f"py-spy profile of the orch root in {out}: {total} samples at 1 kHz from 1.2 s before the go to the "
          f"last line, {idle} waiting in select; the hottest lines, in % of the {total - idle} busy samples:")
    for frame, count in sorted(leaf.items(), key=lambda item: -item[1])[:12]:
        if not frame.startswith("EpollSelector.select"):
            print(f"  {100 * count / busy:5.1f}%  {frame}")


def flood_once(name: str, lines: int, profile: Optional[Path] = None) -> Dict[str, object]:
    import figures

    work = Path(tempfile.mkdtemp(prefix=f"lf-{name}-"))
    env = dict(os.environ)
    flood = None
    spy = None
    os.sync()  # start every run with no dirty pages of the previous one being written back
    try:
        flood = STARTERS[name](work, writer_argv(work, lines, "idle"), env)
        if profile is not None:
            spy = start_profile(orch_root(flood), profile)
        result = wait_delivered(flood, work / "stamp", lines, timeout=60 + lines / 5000)
        if profile is not None:
            stop_profile(spy, profile)
        flood.stop()
        files = rotated_files(flood.log) if name == "orch-rotate" else [flood.log]
        flood = None
        result.update(verify(files, lines, name.startswith("orch")))
        result["bytes"], result["files"] = sum(_size(path) for path in files), len(files)
    except Failed as error:
        raise Failed(f"{error} (files kept in {work})") from None
    finally:
        if flood is not None:
            try:
                flood.stop()
            except Exception:
                pass
        figures.cleanup()
    shutil.rmtree(work, ignore_errors=True)
    return result


# ----- orch: restart latency of a sibling while one worker floods -------------------------


def orch_restarts(kills: int, flooding: bool, rng: random.Random) -> Dict[str, object]:
    import figures
    from proctable import ProcTable, read_cmdline

    def is_victim(table: ProcTable, pid: int) -> bool:
        # a worker names itself `orch victim` (comm), then titles itself `orch: <tree>/victim`
        return table.comm(pid) == "orch victim" or read_cmdline(pid).strip().endswith("/victim")

    work = Path(tempfile.mkdtemp(prefix=f"lf-restart-{'flood' if flooding else 'idle'}-"))
    flood = None
    try:
        # the flooder cycles through 10 MB of lines without end, or idles
        flood = start_orch(work, writer_argv(work, 100_000 if flooding else 0, "loop" if flooding else "idle"),
                           dict(os.environ), victim=True)
        root = orch_root(flood)
        if flooding:  # say go, and let the flood get going
            os.kill(wait_ready(work / "stamp"), signal.SIGUSR1)
            deadline = time.monotonic() + 30
            while _size(flood.log) < 20 * LINE * 1000 and time.monotonic() < deadline:
                time.sleep(0.01)
        table = ProcTable(root, is_victim)
        size0, t0 = _size(flood.log), time.monotonic()
        samples = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.02, 0.1))
            victims = table.scan().leaves
            if len(victims) != 1:
                raise Failed(f"expected one victim under the root, found {sorted(victims)}")
            victim = next(iter(victims))
            watch = figures.NewChildren(table, root, figures._last_pid())
            began = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while not watch.found_leaf():
                if time.monotonic() - began > 15:
                    raise Failed(f"no new victim 15 s after killing {victim}")
                time.sleep(figures.FAST_POLL)
            samples.append(time.monotonic() - began)
            watch.forget()
        rate = (_size(flood.log) - size0) / (time.monotonic() - t0)
        flood.stop()
        flood = None
    except Failed as error:
        raise Failed(f"{error} (files kept in {work})") from None
    finally:
        if flood is not None:
            try:
                flood.stop()
            except Exception:
                pass
        figures.cleanup()
    shutil.rmtree(work, ignore_errors=True)
    return {"samples_s": samples, "p50_s": statistics.median(samples), "max_s": max(samples),
            "log_rate_mb_s": rate / 1e6}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# ----- report -----------------------------------------------------------------------------


def summarize(runs: Dict[str, List[Dict[str, object]]], lines: int) -> Dict[str, Dict[str, object]]:
    summary = {}
    for name, samples in runs.items():
        ok = [run for run in samples if "e2e_s" in run]
        if not ok:
            continue
        median = lambda key: statistics.median(run[key] for run in ok if run.get(key) is not None)  # noqa: E731
        exact = sum(1 for run in ok if run["missing"] == run["duplicated"] == run["out_of_order"] == run["malformed"] == 0
                    and run["partial_tail"] == 0)
        summary[name] = {"runs": len(samples), "delivered": len(ok), "exact": exact, "e2e_s": median("e2e_s"),
                         "writer_s": median("writer_s") if any(run.get("writer_s") for run in ok) else None,
                         "manager_cpu_s": median("manager_cpu_s"),
                         "lines_per_s": lines / median("e2e_s"), "mb_per_s": lines * LINE / 1e6 / median("e2e_s"),
                         "e2e_samples_s": [run["e2e_s"] for run in ok],
                         "worst": {key: max(run[key] for run in ok) for key in
                                   ("missing", "duplicated", "out_of_order", "malformed", "other_records")}}
    return summary


def table(summary: Dict[str, Dict[str, object]], lines: int, failures: Dict[str, List[str]],
          skipped: Dict[str, str]) -> str:
    limit = summary.get("redirect", {}).get("e2e_s")
    rows = ["| contender | start to last line on disk (median) | lines/s | MB/s | speed vs redirect | "
            "writer done | manager CPU | runs with every line once, in order |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in CONTENDERS:
        if name in skipped:
            rows.append(f"| {name} | skipped: {skipped[name]} | | | | | | |")
            continue
        if name not in summary:
            if name in failures:
                rows.append(f"| {name} | failed: {'; '.join(failures[name])[:300]} | | | | | | |")
            continue
        s = summary[name]
        ratio = f"{limit / s['e2e_s']:.2f}x" if limit else "-"
        writer = f"{s['writer_s']:.3f} s" if s["writer_s"] is not None else "-"
        bad = {key: value for key, value in s["worst"].items() if value}
        exact = f"{s['exact']}/{s['runs']}" + (f" (worst run: {bad})" if bad else "")
        if failures.get(name):
            exact += f"; failed: {'; '.join(failures[name])[:200]}"
        rows.append(f"| {name} | {s['e2e_s']:.3f} s | {s['lines_per_s']:,.0f} | {s['mb_per_s']:.1f} | {ratio} | "
                    f"{writer} | {s['manager_cpu_s']:.2f} s | {exact} |")
    return "\n".join(rows)


def restart_table(restarts: Dict[str, Dict[str, object]]) -> str:
    rows = ["| orch, sibling restart latency | p50 | p95 | max | kills (all repetitions) | log file growth meanwhile (median) |",
            "|---|---:|---:|---:|---:|---:|"]
    for case, label in (("idle", "flooder idle"), ("flood", "flooder flooding")):
        if case in restarts:
            r = restarts[case]
            ordered = sorted(r["samples_s"])
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            rows.append(f"| {label} | {r['p50_s'] * 1000:.1f} ms | {p95 * 1000:.1f} ms | {r['max_s'] * 1000:.1f} ms | "
                        f"{len(r['samples_s'])} | {r['log_rate_mb_s']:.1f} MB/s |")
    if "idle" in restarts and "flood" in restarts:
        ratio = restarts["flood"]["p50_s"] / restarts["idle"]["p50_s"]
        rows.append(f"\np50 under flood / idle: {ratio:.2f}x (target: within 2x, "
                    f"{'held' if ratio <= 2 else 'missed'})")
    return "\n".join(rows)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines the writer writes (default 1000000)")
    parser.add_argument("--reps", type=int, default=3, help="runs per contender; the median is shown (default 3)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    parser.add_argument("--kills", type=int, default=20,
                        help="orch sibling kills per case and repetition for the restart figure (pooled over the "
                             "repetitions); 0 skips it (default 20)")
    parser.add_argument("--no-venv", action="store_true", help="use this interpreter as it is (no bench/.venv)")
    parser.add_argument("--json", type=Path, help="also write every sample and the summary here")
    parser.add_argument("--profile", type=Path,
                        help="record the orch root with py-spy during one extra orch run (not counted) into this "
                             "file (collapsed stacks) and print its hottest lines")
    args = parser.parse_args(argv)
    names = args.contenders.split(",")
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    if args.lines < 1:
        parser.error("--lines must be at least 1")
    if not args.no_venv:
        ensure_venv(argv)
    import psutil  # noqa: F401  (imported now, not on the clock of the first run)
    import run

    run.prepare_process()  # subreaper: daemons (orch --detach, pm2) stay ours to clean up
    skipped = {name: reason for name in names if (reason := missing(name))}
    for name, reason in skipped.items():
        print(f"skip {name}: {reason}", flush=True)
    active = [name for name in names if name not in skipped]
    runs: Dict[str, List[Dict[str, object]]] = {name: [] for name in active}
    failures: Dict[str, List[str]] = {}
    started = time.time()
    print(f"{args.lines} lines of {LINE} bytes, {args.reps} runs each: {', '.join(active)} "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    for rep in range(args.reps):
        order = active[rep % len(active):] + active[:rep % len(active)] if active else []
        for name in order:
            try:
                result = flood_once(name, args.lines)
            except Exception as error:  # reported, never fatal
                failures.setdefault(name, []).append(f"rep {rep + 1}: {error}")
                print(f"FAILED {name} rep {rep + 1}: {error}", flush=True)
                continue
            runs[name].append(result)
            print(f"rep {rep + 1} {name:<12} {result['e2e_s']:.3f} s  writer {result.get('writer_s', 0):.3f} s  "
                  f"manager CPU {result['manager_cpu_s']:.2f} s  records {result['records']}  missing "
                  f"{result['missing']}  duplicated {result['duplicated']}  out of order {result['out_of_order']}  "
                  f"malformed {result['malformed']}", flush=True)
    if args.profile and "orch" in active:
        try:
            flood_once("orch", args.lines, args.profile)
        except Exception as error:
            print(f"FAILED the profiled orch run: {error}", flush=True)
    restarts: Dict[str, Dict[str, object]] = {}
    if args.kills and "orch" in active:
        rng = random.Random(1)
        pooled: Dict[str, List[Dict[str, object]]] = {"idle": [], "flood": []}
        for rep in range(args.reps):  # idle and flood alternate, so both see the same machine
            for case in ("idle", "flood") if rep % 2 == 0 else ("flood", "idle"):
                try:
                    sample = orch_restarts(args.kills, case == "flood", rng)
                except Exception as error:
                    print(f"FAILED orch restart ({case}) rep {rep + 1}: {error}", flush=True)
                    continue
                pooled[case].append(sample)
                print(f"rep {rep + 1} orch sibling restart, flooder {case}: p50 {sample['p50_s'] * 1000:.1f} ms  "
                      f"max {sample['max_s'] * 1000:.1f} ms  log growth {sample['log_rate_mb_s']:.1f} MB/s", flush=True)
        for case, samples in pooled.items():
            if samples:
                kills = [kill for sample in samples for kill in sample["samples_s"]]
                restarts[case] = {"samples_s": kills, "p50_s": statistics.median(kills), "max_s": max(kills),
                                  "log_rate_mb_s": statistics.median(sample["log_rate_mb_s"] for sample in samples)}
    summary = summarize(runs, args.lines)
    print()
    print(f"{args.lines:,} lines x {LINE} B, median of {args.reps}, {os.cpu_count()} cores, "
          f"{time.time() - started:.0f} s in all, load average at the end {os.getloadavg()[0]:.1f}")
    print(table(summary, args.lines, failures, skipped))
    if restarts:
        print()
        print(restart_table(restarts))
    if args.json:
        args.json.write_text(json.dumps({"lines": args.lines, "reps": args.reps, "runs": runs, "summary": summary,
                                         "failures": failures, "skipped": skipped, "restarts": restarts}, indent=1))
    complete = all(s["exact"] == s["runs"] for s in summary.values()) and not failures
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
