"""The contenders: how each starts N sleeping leaves, how it is stopped, and what counts as its leaf."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from proctable import LeafTest, ProcTable, read_cmdline

BENCH = Path(__file__).resolve().parent
SLEEP_CODE = "import time; time.sleep(10**9)"
# Generous intensity so the restart and storm figures measure restarts, not give-ups, and
# no crash-loop backoff (a leaf killed twice within 5 s would wait), as supervisord's startsecs = 0.
ORCH_INTENSITY = ["max_restarts = 100000000", "within = 1.0"]
ORCH_WORKER = ['worker = "orch.sleep"', "backoff = 0.0"]


@dataclass
class Launch:
    """One contender set up for one size in its own directory."""

    argv: List[str]
    env: Dict[str, str]
    is_leaf: LeafTest
    stop: Callable[[int], Optional[subprocess.Popen]]  # manager pid -> stop command (None: a signal)
    tree_json: Optional[List[str]] = None  # orch only: the `orch tree --json` command


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(argv: List[str], env: Dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def leaf_sleep_program(table: ProcTable, pid: int) -> bool:
    """supervisord and circus: the exec'd `python -c "...sleep..."` program."""
    return SLEEP_CODE in read_cmdline(pid)


def leaf_bare(table: ProcTable, pid: int) -> bool:
    """bare: a forked sleeper names itself `bare-leaf` once it runs (as an orch worker does)."""
    return table.comm(pid) == "bare-leaf"


def leaf_orch(table: ProcTable, pid: int) -> bool:
    """orch: a worker names itself `orch <node name>` (comm), then titles itself
    `orch: <tree>/<path>` (setproctitle); the bench's leaves are replicas w#0, w#1, ..."""
    if table.comm(pid).startswith("orch w#"):
        return True
    title = read_cmdline(pid).strip()
    return title.startswith("orch: ") and title.rpartition("/")[2].startswith("w#")


# ----- bare -----------------------------------------------------------------


def _sigterm(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)


def bare_launcher(start_method: str):
    def launch(workdir: Path, n: int, env: Dict[str, str]) -> Launch:
        return Launch([sys.executable, str(BENCH / "bare.py"), str(n), start_method], env, leaf_bare, _sigterm)

    return launch


# ----- orch -----------------------------------------------------------------


def orch_tree_text(name: str, n: int, start_method: str, supervisors: int = 0) -> str:
    """A root with n `orch.sleep` workers, or with `supervisors` supervisors sharing them
    (a negative number: -k means supervisors of k workers each, n/k of them).

    The workers are `replicas` of one worker node, as every other contender runs N
    instances of one program (supervisord's numprocs, circus' numprocesses, PM2's
    instances): interchangeable, so they stop together on a teardown, not in OTP order."""
    lines = [f'name = "{name}"', f'start_method = "{start_method}"', *ORCH_INTENSITY, ""]
    if supervisors < 0:
        supervisors = max(1, n // -supervisors)
    if not supervisors:
        return "\n".join(lines + ["[[children]]", 'name = "w"', f"replicas = {n}", *ORCH_WORKER, ""])
    groups = min(supervisors, n)
    for group in range(groups):
        share = len(range(group, n, groups))
        lines += ["[[children]]", f'name = "s{group}"', *ORCH_INTENSITY, "",
                  "  [[children.children]]", '  name = "w"', f"  replicas = {share}",
                  *(f"  {line}" for line in ORCH_WORKER), ""]
    return "\n".join(lines)


def orch_launcher(start_method: str, supervisors: int = 0):
    def launch(workdir: Path, n: int, env: Dict[str, str]) -> Launch:
        name = f"bench-{start_method}-{n}" + (f"-s{supervisors}" if supervisors else "")
        tree = workdir / "tree.toml"
        tree.write_text(orch_tree_text(name, n, start_method, supervisors))
        env = dict(env, ORCH_RUN_DIR=str(workdir / "run"))
        # The console script, as users run it; `python -m` would put the working directory
        # first on sys.path, and from the repository that runs its source, not the install.
        orch = [_bin("orch")]
        return Launch([*orch, "up", str(tree)], env, leaf_orch,
                      lambda pid: _run([*orch, "down", name], env), [*orch, "tree", name, "--json"])

    return launch


# ----- supervisord ------------------------------------------------------------

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

[program:sleep]
command = {python} -c "{code}"
process_name = %(program_name)s_%(process_num)04d
numprocs = {n}
autorestart = true
startsecs = 0
stdout_logfile = NONE
stderr_logfile = NONE
"""


def launch_supervisord(workdir: Path, n: int, env: Dict[str, str]) -> Launch:
    conf = workdir / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(dir=workdir, python=sys.executable, code=SLEEP_CODE, n=n))
    return Launch([_bin("supervisord"), "-n", "-c", str(conf)], env, leaf_sleep_program,
                  lambda pid: _run([_bin("supervisorctl"), "-c", str(conf), "shutdown"], env))


# ----- circus ---------------------------------------------------------------

CIRCUS_INI = """\
[circus]
endpoint = ipc://{dir}/endpoint.sock
pubsub_endpoint = ipc://{dir}/pubsub.sock
stats_endpoint = ipc://{dir}/stats.sock
logoutput = {dir}/circus.log
loglevel = warning

[watcher:sleep]
cmd = {python} -c "{code}"
numprocesses = {n}
copy_env = true
"""


def launch_circus(workdir: Path, n: int, env: Dict[str, str]) -> Launch:
    ini = workdir / "circus.ini"
    ini.write_text(CIRCUS_INI.format(dir=workdir, python=sys.executable, code=SLEEP_CODE, n=n))
    endpoint = f"ipc://{workdir}/endpoint.sock"
    return Launch([_bin("circusd"), str(ini)], env, leaf_sleep_program,
                  lambda pid: _run([_bin("circusctl"), "--endpoint", endpoint, "quit"], env))


# ----- PM2 ------------------------------------------------------------------

PM2_DIR = BENCH / ".venv" / "pm2"  # where bench/logs_flood.py and run.py install it with npm


def pm2_runtime() -> Path:
    return PM2_DIR / "node_modules" / ".bin" / "pm2-runtime"


def launch_pm2(workdir: Path, n: int, env: Dict[str, str]) -> Launch:
    """pm2-runtime in the foreground: one app, N fork-mode instances of the sleep program
    (exec'd as is: interpreter none), restarted at once, however soon after start it died."""
    import json

    app = workdir / "pm2.json"
    app.write_text(json.dumps({"apps": [{
        "name": "sleep", "script": sys.executable, "args": ["-c", SLEEP_CODE], "interpreter": "none",
        "exec_mode": "fork", "instances": n, "autorestart": True, "restart_delay": 0, "min_uptime": 0,
        "max_restarts": 100000000, "out_file": "/dev/null", "error_file": "/dev/null", "merge_logs": True,
    }]}))
    env = dict(env, PM2_HOME=str(workdir / "pm2home"))
    return Launch([str(pm2_runtime()), "start", str(app)], env, leaf_sleep_program, _sigterm)


def pm2_missing() -> Optional[str]:
    import shutil

    if not (shutil.which("node") and shutil.which("npm")):
        return "node/npm not found on this machine (PM2 needs them)"
    if not pm2_runtime().exists():
        return f"{pm2_runtime()} is not installed (npm install --prefix {PM2_DIR} pm2)"
    return None


# ----- the roster -------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    launch: Callable[[Path, int, Dict[str, str]], Launch]
    needs: Optional[str] = None  # a module that must be importable ("pm2": the npm package)
    description: str = ""
    reference: str = "bare"  # what its ratios are taken against (the bare loop of its start method)

    def missing(self) -> Optional[str]:
        if self.needs == "pm2":
            return pm2_missing()
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"module {self.needs!r} is not installed in {sys.executable}"
        return None

    @property
    def is_orch(self) -> bool:
        return self.name.startswith("orch")


ROSTER = [
    Contender("bare", bare_launcher("fork"), description="bench/bare.py: multiprocessing fork, sentinels + wait()"),
    Contender("bare-spawn", bare_launcher("spawn"), description="bench/bare.py spawn: the same loop, spawn context",
              reference="bare"),
    Contender("orch-fork", orch_launcher("fork"), "orchestrator",
              "orch up, start_method fork, N workers under the root"),
    Contender("orch-spawn", orch_launcher("spawn"), "orchestrator",
              "orch up, start_method spawn, N workers under the root", reference="bare-spawn"),
    Contender("orch-tree3", orch_launcher("fork", supervisors=10), "orchestrator",
              "orch up, fork, 3 levels: 10 supervisors x N/10 workers"),
    Contender("orch-tree100", orch_launcher("fork", supervisors=-100), "orchestrator",
              "orch up, fork, 3 levels: N/100 supervisors x 100 workers (the scale run)"),
    Contender("supervisord", launch_supervisord, "supervisor",
              "supervisord -n, one program with numprocs = N"),
    Contender("circus", launch_circus, "circus", "circusd, one watcher with numprocesses = N"),
    Contender("pm2", launch_pm2, "pm2", "pm2-runtime, one app of N fork-mode instances, restart_delay 0"),
]
# What `python3 bench/run.py` measures unless --contenders says otherwise (orch-tree100 is for --scale).
DEFAULT = [c.name for c in ROSTER if c.name != "orch-tree100"]
BY_NAME = {contender.name: contender for contender in ROSTER}
