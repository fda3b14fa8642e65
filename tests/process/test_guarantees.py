"""Fault-tolerance guarantees against real processes: clean stops leave nothing, zombies are
reaped within a loop turn, and the control socket shuts out other users and garbage."""
import json
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from orchestrator.root import control
from orchestrator.testing import RunningTree, descendants, gone, run_orch, wait_for
from tests.helpers import (ORCH_ARGV, PLUGIN, control_request, ignores_sigterm, lines, matches_spec,
                           small_tree, socket_path)

NOBODY = "nobody"
# "No longer than one event-loop turn", with margin for a loaded 2-core box.
ZOMBIE_BOUND = 0.1
# Tree names unique to this session: a root evicts processes titled as its tree's nodes,
# so a same-named tree of a concurrent test run in the same run dir would disturb ours.
UNIQUE = f"g{os.getpid()}"
SAMPLE_INTERVAL = 0.005


# ----- helpers ----------------------------------------------------------------------


def identities(pids):
    """pid -> create_time, for the pids that exist now (so a reused pid is never blamed)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            continue
    return found


def still_there(pid: int, created: float):
    """The status of `pid` if that very process still exists (zombies included), else None."""
    try:
        proc = psutil.Process(pid)
        return proc.status() if proc.create_time() == created else None
    except psutil.NoSuchProcess:
        return None


# ----- 1. every stop path: last records written, SIGKILL after stop_timeout, nothing left --


STOP_TREE = f'''
    name = "stops-{UNIQUE}"
    plugins = ["{PLUGIN}"]
    [[children]]
    name = "rec"
    worker = "t.record"
    args = {{ log = "LOG", label = "rec" }}
    [[children]]
    name = "stubborn"
    worker = "t.ignore_term"
    stop_timeout = 0.5
    [[children]]
    name = "sup"
      [[children.children]]
      name = "rec"
      worker = "t.record"
      args = {{ log = "LOG", label = "sup/rec" }}
      [[children.children]]
      name = "stubborn"
      worker = "t.ignore_term"
      stop_timeout = 0.5
      [[children.children]]
      name = "forker"
      worker = "t.fork_helper"
      args = {{ pidfile = "HELPERS" }}
'''
# Each stubborn worker and the node stopped just before it (reverse spec order, depth first):
# its SIGTERM is sent once that node is gone, so its stop_timeout counts from there.
STUBBORN = {"stubborn": "sup", "sup/stubborn": "sup/forker"}


def request_stop(tree, how: str):
    """Ask the tree to stop; returns the `orch down` process (or None for a signal)."""
    if how == "orch down":
        return subprocess.Popen([*ORCH_ARGV, "down", tree.name], env=tree.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.kill(tree.pid, signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    return None


def watch_until_root_exits(tree, watched, timeout: float = 20.0):
    """Sample until the root has exited: pid -> seconds from now until it was first seen gone.

    Never reaps the root (it stays a zombie for this test to reap and check).
    """
    started = time.monotonic()
    gone_after = {}
    while True:
        now = time.monotonic() - started
        for pid, created in watched.items():
            if pid not in gone_after and gone(pid, created):
                gone_after[pid] = now
        root_status = still_there(tree.pid, watched[tree.pid])
        if root_status in (None, psutil.STATUS_ZOMBIE):
            return gone_after
        assert now < timeout, f"root still {root_status} {timeout:g}s after the stop request:\n{tree.read_output()}"
        time.sleep(SAMPLE_INTERVAL)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["orch down", "SIGTERM", "SIGINT"])
def test_stop_leaves_no_process_no_zombie_and_no_socket(subreaper, orch_tree, orch_env, tmp_path, how):
    log, helpers = tmp_path / "log", tmp_path / "helpers"
    tree = orch_tree(STOP_TREE.replace("LOG", str(log)).replace("HELPERS", str(helpers)))
    pids = tree.pids()
    wait_for(lambda: sorted(lines(log)) == ["start rec", "start sup/rec"]
             and all(ignores_sigterm(pids[path]) for path in STUBBORN) and lines(helpers),
             message="records started, stubborn workers ignoring SIGTERM, forker's helper up")
    watched = identities({tree.pid, *pids.values(), *(int(p) for p in lines(helpers)),
                          *(proc.pid for proc in descendants(tree.pid))})
    assert socket_path(orch_env, tree.name).exists()

    down = request_stop(tree, how)
    try:
        gone_after = watch_until_root_exits(tree, watched)
        if down is not None:
            _, err = down.communicate(timeout=20)
            assert down.returncode == 0, err
    finally:
        if down is not None and down.poll() is None:
            down.kill()
            down.communicate()
    output = tree.read_output()

    # Graceful workers ran their SIGTERM handler and wrote their last record.
    assert sorted(lines(log)) == ["start rec", "start sup/rec", "stop rec", "stop sup/rec"], output
    # A worker ignoring SIGTERM is SIGKILLed after its stop_timeout: not before, not at the 5 s default.
    for path, before in STUBBORN.items():
        assert f"{path} did not stop within 0.5s; sending SIGKILL" in output, output
        asked, ended = gone_after.get(pids[before]), gone_after.get(pids[path])
        lasted = None if None in (asked, ended) else ended - asked
        assert lasted is not None and 0.45 <= lasted < 4.0, \
            f"{path} ended {lasted}s after its SIGTERM; expected just after its 0.5 s stop_timeout"
    assert tree.wait_exit() == 0, output  # reaps the root: it is our child
    # Nothing of the tree exists, not even as a zombie. We are the subreaper, so anything the
    # root left behind (live, or dead and never reaped) would now be our child and visible here.
    leftovers = {pid: status for pid, created in watched.items()
                 if (status := still_there(pid, created)) is not None}
    assert leftovers == {}, f"processes of the tree left after a clean stop ({how}): {leftovers}"
    adopted = [(proc.pid, proc.status()) for proc in psutil.Process().children()
               if proc.pid in watched]
    assert adopted == [], f"the root exited leaving these to its subreaper (us): {adopted}"
    assert not socket_path(orch_env, tree.name).exists(), "control socket left behind"


# ----- 2. no zombie outlives one loop turn, during a burst of kills --------------------


BURST_TREE = f'''
    name = "burst-{UNIQUE}"
    plugins = ["{PLUGIN}"]
    max_restarts = 100000
    within = 1
    [[children]]
    name = "w0"
    worker = "t.sleep"
    restart = "always"
    backoff = 0
    [[children]]
    name = "a"
    restart = "always"
    backoff = 0
    max_restarts = 100000
    within = 1
      [[children.children]]
      name = "w1"
      worker = "t.sleep"
      restart = "always"
      backoff = 0
      [[children.children]]
      name = "b"
      restart = "always"
      backoff = 0
      max_restarts = 100000
      within = 1
        [[children.children.children]]
        name = "w2"
        worker = "t.sleep"
        restart = "always"
        backoff = 0
        [[children.children.children]]
        name = "forker"
        worker = "t.fork_helper"
        restart = "always"
        backoff = 0
        args = {{ pidfile = "HELPERS" }}
    [[children]]
    name = "c"
    restart = "always"
    backoff = 0
    max_restarts = 100000
    within = 1
      [[children.children]]
      name = "w3"
      worker = "t.sleep"
      restart = "always"
      backoff = 0
      [[children.children]]
      name = "w4"
      worker = "t.sleep"
      restart = "always"
      backoff = 0
'''
BURST_SECONDS = 3.0
KILL_EVERY = 0.03
SUPERVISOR_EVERY = 5  # every 5th kill takes a supervisor (and so its whole subtree)
SUPERVISORS = {"a", "a/b", "c"}
# Only nodes are killed: a helper killed by us would stay a zombie of its worker
# (t.fork_helper never waits for it), which is the worker's doing, not orch's.
WORKERS = {"w0", "a/w1", "a/b/w2", "a/b/forker", "c/w3", "c/w4"}


def node_path(proc: psutil.Process):
    """The node path from the process title (`orch: burst/a/b`), or None for a helper."""
    try:
        title = " ".join(proc.cmdline()).strip()  # setproctitle pads argv with empty strings
    except psutil.Error:
        return None
    prefix = f"orch: burst-{UNIQUE}/"
    if not title.startswith(prefix):
        return None
    # a forked helper keeps its worker's title: tell them apart by who their parent is
    try:
        parent_title = " ".join(proc.parent().cmdline()).strip()
    except (psutil.Error, AttributeError):
        return None
    return None if parent_title == title else title[len(prefix):]


class ZombieWatch:
    """Samples every descendant of the root; remembers when each zombie was first and last seen."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.first = {}  # (pid, create_time) -> (monotonic, ppid)
        self.last = {}
        self.samples = 0

    def sample(self):
        """Record zombies; return the live processes."""
        procs = descendants(self.root_pid)
        now = time.monotonic()
        self.samples += 1
        live = []
        for proc in procs:
            try:
                status, ppid, created = proc.status(), proc.ppid(), proc.create_time()
            except psutil.Error:
                continue
            if status == psutil.STATUS_ZOMBIE:
                self.first.setdefault((proc.pid, created), (now, ppid))
                self.last[(proc.pid, created)] = now
            else:
                live.append(proc)
        return live

    def offenders(self, bound: float):
        slow = []
        for key, (first, ppid) in self.first.items():
            lasted = self.last[key] - first
            if lasted > bound:
                whose = "the root" if ppid == self.root_pid else f"pid {ppid}"
                slow.append(f"pid {key[0]} stayed a zombie of {whose} for {lasted * 1000:.0f} ms")
        return slow


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_no_process_of_the_tree_stays_a_zombie_during_a_kill_burst(orch_tree, tmp_path):
    tree = orch_tree(BURST_TREE.replace("HELPERS", str(tmp_path / "helpers")))
    watch = ZombieWatch(tree.pid)
    rng = random.Random(20240611)
    killed = set()
    kills = supervisor_kills = 0
    deadline = time.monotonic() + BURST_SECONDS
    next_kill = time.monotonic()
    while time.monotonic() < deadline:
        live = watch.sample()
        if time.monotonic() >= next_kill:
            want_supervisor = kills % SUPERVISOR_EVERY == SUPERVISOR_EVERY - 1
            pool = [proc for proc in live if proc.pid not in killed
                    and node_path(proc) in (SUPERVISORS if want_supervisor else WORKERS)]
            if pool:
                victim = rng.choice(pool)
                try:
                    victim.send_signal(signal.SIGKILL)  # psutil checks it is the same process
                    killed.add(victim.pid)
                    kills += 1
                    supervisor_kills += want_supervisor
                except psutil.NoSuchProcess:
                    pass
            next_kill = time.monotonic() + KILL_EVERY
        time.sleep(SAMPLE_INTERVAL)

    # Keep watching while the tree repairs itself, and after.
    def repaired():
        watch.sample()
        return matches_spec(tree)
    wait_for(repaired, timeout=10, message="the tree back to its spec after the burst")
    settle = time.monotonic() + 0.3
    while time.monotonic() < settle:
        watch.sample()
        time.sleep(SAMPLE_INTERVAL)

    assert kills >= 40 and supervisor_kills >= 8, (kills, supervisor_kills)
    slow = watch.offenders(ZOMBIE_BOUND)
    assert slow == [], (f"{len(slow)} of {len(watch.first)} zombies seen outlived {ZOMBIE_BOUND * 1000:.0f} ms "
                        f"({kills} kills, {watch.samples} samples):\n" + "\n".join(slow))
    assert tree.process.poll() is None


# ----- 3. control socket: other users and garbage ------------------------------------


SMALL_TREE = small_tree(f"ctl-{UNIQUE}")


def in_child(function, uid=None, gid=None) -> dict:
    """Run `function` in a forked child, optionally as another user; return its JSON result.

    A fork, not an exec: this interpreter may live where that user cannot execute it.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            result = function()
        except BaseException as error:
            result = {"error": repr(error)}
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def try_socket(path: Path):
    def attempt():
        outcome = {"uid": os.getuid()}
        try:
            os.listdir(path.parent)
            outcome["listdir"] = "ok"
        except OSError as error:
            outcome["listdir"] = type(error).__name__
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(str(path))
            sock.sendall(b'{"cmd": "ping"}\n')
            outcome["connect"] = "ok"
            outcome["reply"] = json.loads(sock.makefile("rb").readline())
        except OSError as error:
            outcome["connect"] = type(error).__name__
        finally:
            sock.close()
        return outcome
    return attempt


@pytest.fixture
def world_traversable_run_base(orch_env):
    """A run base every user can traverse (pytest's tmp dirs are 0700: they would hide the test)."""
    base = tempfile.mkdtemp(prefix="orch-uid-", dir="/tmp")
    os.chmod(base, 0o755)
    orch_env[control.ENV_RUN_DIR] = base
    yield Path(base)
    shutil.rmtree(base, ignore_errors=True)


def nobody_ids():
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    try:
        entry = pwd.getpwnam(NOBODY)
    except KeyError:
        pytest.skip(f"no user {NOBODY!r} on this machine")
    return entry.pw_uid, entry.pw_gid


@pytest.mark.timeout(30)
def test_another_user_cannot_connect_to_the_control_socket(world_traversable_run_base, orch_tree, orch_env):
    uid, gid = nobody_ids()
    tree = orch_tree(SMALL_TREE)
    before = tree.pids()
    path = socket_path(orch_env, tree.name)
    directory = path.parent
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    # The same client as the owner does get through: the path and the client are right.
    mine = in_child(try_socket(path))
    assert mine["connect"] == "ok" and mine["reply"]["pid"] == tree.root_pid, mine

    theirs = in_child(try_socket(path), uid, gid)
    assert theirs["uid"] == uid, theirs
    assert (theirs["listdir"], theirs["connect"]) == ("PermissionError", "PermissionError"), theirs

    # Each layer holds alone: with the directory opened for traversal, the 0600 socket still refuses.
    os.chmod(directory, 0o711)
    try:
        theirs = in_child(try_socket(path), uid, gid)
    finally:
        os.chmod(directory, 0o700)
    assert theirs["connect"] == "PermissionError", theirs

    assert tree.pids() == before
    assert tree.process.poll() is None


GARBAGE_CLIENTS = 200


def garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 4096))
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 512)) + b"\n"
    if kind == 2:
        return b'{"cmd": "tr'  # half a request
    if kind == 3:
        return b"x" * (control.MAX_REQUEST + rng.randrange(1, 100000))  # oversized, no newline
    if kind == 4:
        return b"\n" * rng.randrange(1, 2000)  # many error replies nobody reads
    return b'{"cmd": "nope"}\n["tree"]\n' * rng.randrange(1, 200)  # well-formed nonsense, unread


def send_garbage_and_vanish(env, seed: int) -> bool:
    rng = random.Random(seed)
    payload = garbage(rng)
    deadline = time.monotonic() + 20
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(str(socket_path(env, f"ctl-{UNIQUE}")))
            break
        except (BlockingIOError, socket.timeout):
            sock.close()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # backlog full: retry, as the CLI client does
    with sock:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # the root hung up on an oversized request
    return True


class GarbageStorm:
    """`clients` garbage clients from `threads` threads, paced to last about `seconds`."""

    def __init__(self, env, clients: int, seconds: float, threads: int = 8) -> None:
        self.env = env
        self._seeds = iter(range(clients))
        self._lock = threading.Lock()
        self._pause = seconds * threads / clients
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._futures = [self._pool.submit(self._run) for _ in range(threads)]

    def _run(self) -> int:
        connected = 0
        while True:
            with self._lock:
                seed = next(self._seeds, None)
            if seed is None:
                return connected
            connected += send_garbage_and_vanish(self.env, seed)
            time.sleep(self._pause)  # pacing, so the garbage spans the `orch tree` calls

    def done(self) -> bool:
        return all(future.done() for future in self._futures)

    def connected(self) -> int:
        """Wait for every client; how many got connected."""
        try:
            return sum(future.result(timeout=60) for future in self._futures)
        finally:
            self._pool.shutdown()


@pytest.mark.timeout(60)
def test_orch_tree_keeps_answering_while_200_clients_send_garbage(orch_tree, orch_env):
    tree = orch_tree(SMALL_TREE)
    before = tree.pids()
    calls = []  # seconds each `orch tree` took, and whether garbage was still being sent
    storm = GarbageStorm(orch_env, GARBAGE_CLIENTS, seconds=2.0)
    try:
        while not storm.done() or len(calls) < 3:
            started, during = time.monotonic(), not storm.done()
            result = run_orch("tree", tree.name, "--json", env=orch_env, timeout=30)
            calls.append((round(time.monotonic() - started, 2), during))
            assert result.returncode == 0, f"`orch tree` failed during the garbage: {result.stderr}"
            nodes = {n["path"]: n["pid"] for n in json.loads(result.stdout) if n["kind"] != "helper"}
            assert nodes == before, f"the tree's pids changed during the garbage: {nodes} != {before}"
    finally:
        connected = storm.connected()
    assert connected == GARBAGE_CLIENTS, f"only {connected} of {GARBAGE_CLIENTS} garbage clients got connected"
    assert sum(during for _, during in calls) >= 2, f"too few `orch tree` calls overlapped the garbage: {calls}"
    # 10 s is the client's own timeout; it answered well within it every time.
    assert max(seconds for seconds, _ in calls) < 10, calls
    assert tree.pids() == before
    assert tree.process.poll() is None


@pytest.mark.timeout(30)
def test_one_client_with_64k_of_empty_lines_does_not_stall_the_root(orch_tree, orch_env):
    tree = orch_tree(SMALL_TREE)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path(orch_env, tree.name)))
        sock.sendall(b"\n" * (control.MAX_REQUEST - 1))  # 65,535 empty requests, none oversized
    started = time.monotonic()
    reply = control_request(orch_env, tree.name, {"cmd": "ping"}, timeout=3.0)
    assert reply["pid"] == tree.root_pid, reply
    assert time.monotonic() - started < 3.0


# ----- isolation: trees in separate run directories -------------------------------------


def stays_alive(pids, seconds: float):
    """Observe `pids` for `seconds`; the first one seen gone, or None."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for pid in pids:
            if gone(pid):
                return pid
        time.sleep(0.01)
    return None


@pytest.mark.timeout(30)
def test_a_same_named_tree_in_another_run_dir_leaves_ours_alone(orch_tree, orch_env, tmp_path):
    ours = orch_tree(small_tree(f"twin-{UNIQUE}"))
    before = ours.pids()
    env = dict(orch_env)
    env[control.ENV_RUN_DIR] = str(tmp_path / "other-run")
    theirs = RunningTree(ours.file, ours.name, env, tmp_path / "twin.out")
    try:
        theirs.wait_running()
        victim = stays_alive(list(before.values()), 1.0)
        assert victim is None, (f"starting a same-named tree in another run dir took down pid {victim} "
                                f"of ours:\n{ours.read_output()}")
        assert ours.pids() == before
    finally:
        theirs.kill_everything()
