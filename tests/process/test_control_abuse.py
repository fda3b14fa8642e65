"""The control socket under abuse: whatever clients send, or fail to read, the root stays up,
its memory, fds and CPU stay bounded, and supervision keeps its pace (issue item 1)."""
import json
import multiprocessing
import os
import resource
import signal
import socket
import time

import psutil
import pytest

from orchestrator.root import control
from orchestrator.root import ctlserver
from orchestrator.testing import json_tree, run_orch, wait_for
from tests.helpers import small_tree, socket_path, spec_pids

# Unique to this session: a root evicts processes titled as its tree's nodes.
NAME = f"abuse{os.getpid()}"
TREE = small_tree(NAME)
MB = 1 << 20
# What the root may grow by while abused: a few partial requests and replies, far
# below what an unbounded inbox reached (hundreds of MB).
RSS_SLACK = 50 * MB
# fds beyond its quiet count: every client it may hold, plus transient ones (a psutil scan).
FD_SLACK = ctlserver.MAX_CLIENTS + 16
RESTART_BOUND = 2.0


# ----- helpers ----------------------------------------------------------------------


def sock_path(env) -> str:
    return str(socket_path(env, NAME))


def connect(env, timeout: float = 5.0) -> socket.socket:
    """A connected client; waits while the root's accept backlog is full, as the CLI does."""
    def attempt():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sock_path(env))
        except BlockingIOError:
            sock.close()
            return None
        except OSError:
            sock.close()
            raise
        return sock
    return wait_for(attempt, timeout, "the root to accept a connection")


def read_replies(sock: socket.socket) -> list:
    """Every reply line until the root closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def converse(env, payload: bytes, pieces: int = 0) -> list:
    """Send `payload` (in `pieces`-byte sends if given), close our side, return the replies."""
    with connect(env) as sock:
        try:
            if pieces:
                for start in range(0, len(payload), pieces):
                    sock.sendall(payload[start:start + pieces])
            else:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the root hung up on us; what it said before is still readable
        return read_replies(sock)


def ask(env, command: dict) -> dict:
    with connect(env) as sock:
        sock.sendall(json.dumps(command).encode() + b"\n")
        line = sock.makefile("rb").readline()
    return json.loads(line)


def ping(env) -> dict:
    reply = ask(env, {"cmd": "ping"})
    assert reply["ok"], reply
    return reply


def node_pids(env) -> dict:
    return spec_pids(json_tree(env, NAME))


def fd_count(proc: psutil.Process) -> int:
    return proc.num_fds()


def rss(proc: psutil.Process) -> int:
    return proc.memory_info().rss


class RootWatch:
    """The root process of the running tree, with its quiet fd count and memory."""

    def __init__(self, env) -> None:
        self.env = env
        for _ in range(3):  # warm up: the first psutil scans allocate caches for good
            assert ask(env, {"cmd": "tree"})["ok"]
        self.proc = psutil.Process(ping(env)["pid"])
        self.fds = wait_for(lambda: self._quiet_fds(), 5, "a steady fd count in the root")
        self.rss = rss(self.proc)

    def _quiet_fds(self):
        first = fd_count(self.proc)
        return first if fd_count(self.proc) == first else None

    def assert_bounded(self, label: str) -> None:
        assert self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE, f"root died {label}"
        fds, memory = fd_count(self.proc), rss(self.proc)
        assert fds <= self.fds + FD_SLACK, f"root holds {fds} fds {label} (quiet: {self.fds})"
        assert memory <= self.rss + RSS_SLACK, f"root RSS {memory // MB} MB {label} (quiet: {self.rss // MB} MB)"

    def refused(self) -> dict:
        return ping(self.env)["refused"]


@pytest.fixture
def tree(orch_tree, orch_env):
    running = orch_tree(TREE)
    running.root = RootWatch(orch_env)
    running.before = node_pids(orch_env)
    return running


def assert_unharmed(tree, env) -> None:
    assert tree.root.proc.is_running(), f"the root died:\n{tree.read_output()}"
    assert node_pids(env) == tree.before, "the tree's processes changed"


# ----- 1. requests that blow the parser's stack -------------------------------------------


DEEP = 5000
STACK_BLOWERS = [
    ("open arrays", b"[" * 3000),
    ("open objects", b'{"a":' * 3000),
    ("mixed", b'[{"a":[' * 2000),
    ("closed arrays", b"[" * DEEP + b"]" * DEEP),
    ("closed objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("as deep as the limit allows", b"[" * (control.MAX_REQUEST - 1)),
    ("deep inside a request", b'{"cmd": "ping", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
]


@pytest.mark.parametrize("label,payload", STACK_BLOWERS, ids=[label for label, _ in STACK_BLOWERS])
def test_json_nested_too_deep_gets_an_error_reply(tree, orch_env, label, payload):
    replies = converse(orch_env, payload + b"\n")
    assert len(replies) == 1 and replies[0]["ok"] is False, (label, replies)
    assert "deep" in replies[0]["error"], replies
    assert_unharmed(tree, orch_env)


def test_nesting_a_parser_can_take_is_still_answered(tree, orch_env):
    depth = 200
    replies = converse(orch_env, b'{"cmd": "ping", "x": ' + b"[" * depth + b"]" * depth + b"}\n")
    assert [reply["ok"] for reply in replies] == [True], replies


# ----- 2. requests over the size limit -------------------------------------------------


def padded_ping(size: int) -> bytes:
    """A valid ping request of exactly `size` bytes, newline not counted."""
    head, tail = b'{"cmd": "ping", "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("pieces", [0, 4096], ids=["one send", "4k pieces"])
def test_the_size_limit_is_exact_whatever_the_pieces(tree, orch_env, pieces):
    largest = converse(orch_env, padded_ping(control.MAX_REQUEST) + b"\n", pieces)
    assert [reply["ok"] for reply in largest] == [True], largest
    too_long = converse(orch_env, padded_ping(control.MAX_REQUEST + 1) + b"\n", pieces)
    assert len(too_long) == 1 and "longer than" in too_long[0]["error"], too_long
    assert tree.root.refused()["too_long"] == 1
    assert_unharmed(tree, orch_env)
    tree.root.assert_bounded("after oversized requests")


def test_a_request_without_newline_is_refused_once_the_limit_is_buffered(tree, orch_env):
    replies = converse(orch_env, b"x" * (3 * control.MAX_REQUEST), pieces=4096)
    assert len(replies) == 1 and "longer than" in replies[0]["error"], replies
    assert_unharmed(tree, orch_env)


def test_a_good_request_then_a_huge_partial_line(tree, orch_env):
    replies = converse(orch_env, b'{"cmd": "ping"}\n' + b"x" * (control.MAX_REQUEST + 10))
    assert [reply["ok"] for reply in replies] == [True, False], replies
    assert "longer than" in replies[1]["error"]
    assert_unharmed(tree, orch_env)


# ----- 3. a client that never reads its replies ---------------------------------------


@pytest.mark.timeout(30)
def test_a_client_that_never_reads_costs_bounded_memory(tree, orch_env):
    root = tree.root
    batch = b'{"cmd": "ping"}\n' * 200 + b'{"cmd": "tree"}\n' * 5
    sent, peak, dropped = 0, 0, False
    started = time.monotonic()
    with connect(orch_env, timeout=0.2) as sock:
        # The root answers until its replies fill the socket, stops reading us, and after
        # STALL_TIMEOUT stops answering: it drains what we send, then hangs up.
        while not dropped:
            assert time.monotonic() - started < 15, f"still connected after {sent // MB} MB sent"
            try:
                sock.sendall(batch)
                sent += len(batch)
            except socket.timeout:
                pass  # blocked: the root is not reading us, as it should not
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
            peak = max(peak, rss(root.proc))
            assert peak <= root.rss + RSS_SLACK, f"root RSS {peak // MB} MB after {sent // MB} MB sent"
    assert root.refused()["unread_replies"] >= 1
    wait_for(lambda: fd_count(root.proc) <= root.fds, 5, "the root to let go of the client")
    after = rss(root.proc)
    assert after <= root.rss + RSS_SLACK
    # And nothing keeps growing once the client is gone.
    for _ in range(20):
        assert ping(orch_env)
    assert rss(root.proc) <= after + 5 * MB
    assert_unharmed(tree, orch_env)


# ----- 4. hoarded connections -------------------------------------------------------------


@pytest.fixture
def fds_for():
    """`fds_for(n)`: make sure this test process may open `n` fds (restored afterwards)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)

    def ensure(needed: int) -> None:
        soft, hard = old
        if soft != resource.RLIM_INFINITY and soft < needed:
            if hard != resource.RLIM_INFINITY and hard < needed:
                pytest.skip(f"needs {needed} fds; the hard limit is {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield ensure
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


@pytest.mark.timeout(30)
def test_idle_connections_cannot_lock_out_orch_down(tree, orch_env, fds_for):
    root = tree.root
    hoard = 3 * ctlserver.MAX_CLIENTS
    fds_for(hoard + 256)
    idle = []
    try:
        for _ in range(hoard):
            idle.append(connect(orch_env))
            assert fd_count(root.proc) <= root.fds + FD_SLACK
        wait_for(lambda: root.refused()["too_many_clients"] >= hoard - ctlserver.MAX_CLIENTS, 5,
                 "the root to make room by dropping idle clients")
        root.assert_bounded(f"holding {hoard} idle connections")
        # The oldest was dropped to make room, and told why.
        [reply] = read_replies(idle[0])
        assert reply["ok"] is False and "idle the longest" in reply["error"], reply
        # Fresh clients get through while the hoard is held: a request, the CLI, and `orch down`.
        assert ping(orch_env)["pid"] == root.proc.pid
        assert node_pids(orch_env) == tree.before
        result = run_orch("down", NAME, env=orch_env, timeout=30)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: not root.proc.is_running() or root.proc.status() == psutil.STATUS_ZOMBIE, 10,
                 "the root to stop after `orch down`")
    finally:
        for sock in idle:
            sock.close()


# ----- 5. supervision while the socket is abused -----------------------------------------


def abuse(path: str, seconds: float, hoard_size: int, reader_count: int) -> None:  # pragma: no cover
    """Every abuse at once, from one (child) process, for `seconds`: `hoard_size` idle
    connections, renewed all the time; `reader_count` clients asking for `tree` after
    `tree` (pipelined by 4); clients that never read their replies; lines that never
    end; stack blowers. Non-blocking throughout, so no abuse waits for another."""
    deadline = time.monotonic() + seconds
    hoard, deaf, long = [], [], []
    readers = {}  # socket -> replies still due

    def fresh():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except OSError:  # backlog full: try again next round
            sock.close()
            return None

    def send(sock, data) -> bool:
        try:
            sock.send(data)
            return True
        except BlockingIOError:
            return True
        except OSError:
            sock.close()
            return False

    def read_replies(sock) -> int:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            sock.close()
            readers.pop(sock)
        return data.count(b"\n")

    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        if len(hoard) >= hoard_size:
            hoard.pop(0).close()
        while len(hoard) < hoard_size and (sock := fresh()):
            hoard.append(sock)
        while len(readers) < reader_count and (sock := fresh()):
            readers[sock] = 0
        for sock in list(readers):
            readers[sock] -= read_replies(sock)
            if sock in readers and readers[sock] <= 0:
                readers[sock] = 4 if send(sock, b'{"cmd": "tree"}\n' * 4) else readers.pop(sock)
        while len(deaf) < 2 and (sock := fresh()):
            deaf.append(sock)
        # An unknown command is echoed in the error: 8 KB replies fill the socket fast.
        deaf = [sock for sock in deaf if send(sock, b'{"cmd": "%s"}\n' % (b"x" * 8192) * 4)]
        while len(long) < 2 and (sock := fresh()):
            long.append(sock)
        long = [sock for sock in long if send(sock, b"x" * 16384)]  # a line that never ends
        if rounds % 10 == 0 and (sock := fresh()):
            send(sock, b"[" * 100000 + b"\n")
            sock.close()
        time.sleep(0.002)  # leave the 2-core box some air: the abuse is in kind, not volume


def start_abuse(env, seconds: float, hoard_size: int, reader_count: int) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(
        target=abuse, args=(sock_path(env), seconds, hoard_size, reader_count), daemon=True)
    process.start()
    return process


def stop_abuse(process: multiprocessing.Process) -> None:
    process.terminate()
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


def evicting(counts) -> bool:
    return counts["too_many_clients"] >= 300


def refusing(counts) -> bool:
    return counts["too_long"] >= 2 and counts["unread_replies"] >= 1


ABUSES = {
    # Far more connections than the cap: the root evicts all the time; the slow kinds
    # (lines that never end, replies never read) are evicted before they get far.
    "hoarding": (2 * ctlserver.MAX_CLIENTS, 4, evicting),
    # Under the cap, with more `tree` scans: every abuser lives until refused.
    "heavy": (16, 8, refusing),
}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", list(ABUSES))
def test_a_killed_worker_is_replaced_in_time_while_the_socket_is_abused(tree, orch_env, kind):
    root = tree.root
    victim = psutil.Process(tree.before["a"])
    hoard_size, reader_count, in_full_swing = ABUSES[kind]
    abuser = start_abuse(orch_env, 20, hoard_size, reader_count)
    try:
        wait_for(lambda: in_full_swing(root.refused()), 30, "the abuse to be in full swing")
        root.assert_bounded("under abuse")
        others = {child.pid for child in root.proc.children()}
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)

        def replacement():
            new = [child for child in root.proc.children() if child.pid not in others]
            return new[0] if new else None
        new = wait_for(replacement, 5, "a new child of the root")
        took = time.monotonic() - killed_at
        assert took < RESTART_BOUND, f"the worker was replaced after {took:.2f}s under abuse"
        assert new.ppid() == root.proc.pid
        for _ in range(10):
            root.assert_bounded("under abuse, after the restart")
        assert node_pids(orch_env) == {**tree.before, "a": new.pid}
        counts = root.refused()
        assert counts["internal_error"] == 0, counts
    finally:
        stop_abuse(abuser)
    assert root.proc.is_running()
    wait_for(lambda: fd_count(root.proc) <= root.fds, 5, "the root to let go of the abuser's connections")


@pytest.mark.timeout(40)
def test_orch_down_gets_through_a_flood_of_connections(tree, orch_env):
    root = tree.root
    hoard_size, reader_count, in_full_swing = ABUSES["hoarding"]
    abuser = start_abuse(orch_env, 20, hoard_size, reader_count)
    try:
        wait_for(lambda: in_full_swing(root.refused()), 30, "the abuse to be in full swing")
        result = run_orch("down", NAME, env=orch_env, timeout=30)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: not root.proc.is_running() or root.proc.status() == psutil.STATUS_ZOMBIE, 10,
                 "the root to stop after `orch down`")
    finally:
        stop_abuse(abuser)
