"""`orch up` as PID 1 of its own PID namespace, as a container's entrypoint: it reaps every
zombie there, stops the tree in order on SIGTERM or SIGINT, and exits with the tree's code."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import psutil
import pytest

from orchestrator.testing import wait_for
from tests.helpers import PLUGIN, lines, recorder, tree_text

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]

# A worker that double-forks short-lived daemons, as a service's start script might.
DAEMON_PLUGIN = '''
import os, signal, time
from orchestrator import hookimpl

def double_fork(out, count=3, lifetime=0.5):
    for index in range(count):
        child = os.fork()
        if child == 0:
            if os.fork() == 0:
                os.setsid()
                open(f"{out}.{index}", "w").close()
                os.execvp("sleep", ["sleep", str(lifetime)])
            os._exit(0)
        os.waitpid(child, 0)
    with open(out, "w") as handle:
        handle.write("forked")
    while True:
        signal.pause()

@hookimpl
def orch_workers():
    return {"pid1.double_fork": double_fork}
'''


def _unshare_refused() -> Optional[str]:
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    try:
        result = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`unshare --pid --fork --mount-proc true` failed: {error}"
    if result.returncode != 0:
        return f"the kernel or sandbox refuses a new PID namespace: {result.stderr.strip()}"
    return None


_REFUSED = _unshare_refused()
pytestmark = pytest.mark.skipif(_REFUSED is not None, reason=str(_REFUSED))


def _namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _members(init: psutil.Process) -> List[psutil.Process]:
    """Every process in the namespace whose init (pid 1 there) is `init`, with host pids."""
    namespace = _namespace(init.pid)
    found = []
    for proc in psutil.process_iter():
        try:
            if _namespace(proc.pid) == namespace:
                found.append(proc)
        except OSError:
            continue
    return found


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def _zombies(init: psutil.Process) -> List[psutil.Process]:
    zombies = []
    for proc in _members(init):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                zombies.append(proc)
        except psutil.NoSuchProcess:
            continue
    return zombies


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_orch_as_pid1(tmp_path: Path, orch_env, signum):
    plugin = tmp_path / "pid1_plugin.py"
    plugin.write_text(DAEMON_PLUGIN)
    log = tmp_path / "order.log"
    forked = tmp_path / "forked"
    file = tmp_path / "tree.toml"
    file.write_text(tree_text("pid1", recorder("first", log) + f'''
        [[children]]
        name = "sup"
          [[children.children]]
          name = "daemons"
          worker = "pid1.double_fork"
          args = {{ out = "{forked}" }}
        ''' + recorder("last", log), plugins=(PLUGIN, plugin)))
    output = open(tmp_path / "pid1.out", "wb")
    unshare = subprocess.Popen([*UNSHARE, sys.executable, "-m", "orchestrator", "up", str(file)],
                               env=orch_env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    init: Optional[psutil.Process] = None
    try:
        # The namespace's pid 1 is unshare's child, which execs `orch up`: the guardian.
        init = wait_for(lambda: next(iter(psutil.Process(unshare.pid).children()), None), 10, "the namespace's init")
        wait_for(lambda: lines(log) == ["start first", "start last"] and forked.exists(), 20,
                 f"the tree to come up ({(tmp_path / 'pid1.out').read_text()})")
        assert init.cmdline()[0] == "orch: pid1 (guardian)"  # pid 1 there is the guardian
        assert _namespace(init.pid) != _namespace(os.getpid())

        # The daemons the worker double-forked (each a `sleep`) reparent to the root (the
        # tree's subreaper) and exit: none is left, not even as a zombie.
        wait_for(lambda: all(Path(f"{forked}.{index}").exists() for index in range(3)), 10, "the daemons to start")
        wait_for(lambda: not [proc for proc in _members(init) if _name(proc) == "sleep"], 10,
                 "the daemons to end and be reaped")
        assert not _zombies(init), _zombies(init)

        # A process outside the root's subtree orphaned inside the namespace (one that
        # `docker exec` started, say) reparents to pid 1, the guardian, which reaps it.
        subprocess.run(["nsenter", "--target", str(init.pid), "--pid", "--", "sh", "-c", "sleep 0.5 & exit 0"],
                       check=True, timeout=10)
        orphan = wait_for(lambda: [proc for proc in init.children() if proc.name() == "sleep"], 5,
                          "the orphaned sleep to reparent to pid 1")[0]
        wait_for(lambda: not orphan.is_running(), 5, "the orphan reaped by pid 1 once it exited")
        time.sleep(0.2)
        assert not _zombies(init), _zombies(init)

        # PID 1 has no default signal actions; ours are waited for, so both stop the tree in order.
        os.kill(init.pid, signum)
        assert unshare.wait(30) == 0, (tmp_path / "pid1.out").read_text()
        assert lines(log) == ["start first", "start last", "stop last", "stop first"]
    finally:
        if unshare.poll() is None:
            if init is not None and init.is_running():
                init.kill()  # pid 1 gone: the kernel kills the whole namespace
            unshare.kill()
            unshare.wait(10)
        output.close()
