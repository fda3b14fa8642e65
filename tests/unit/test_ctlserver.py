"""The control server in this process, on a real loop and real sockets: the limits whose
constants a running root cannot have patched (idle timeout, cap, stall), handler and
callback bugs, accept() failing, the round-robin's time budget, and deferred replies."""
import errno
import json
import select
import socket
import time

import pytest

from orchestrator.root import ctlserver
from orchestrator.root.control import MAX_REQUEST
from orchestrator.root.ctlserver import ControlServer, Deferred
from orchestrator.engine.loop import Loop

WORK = 0.005  # what a `slow` request costs, standing for a `tree` request's psutil scan


class Harness:
    def __init__(self, tmp_path) -> None:
        self.path = str(tmp_path / "control.sock")
        self.loop = Loop()
        self.calls = []  # (client tag, time) of each request handled
        self.deferred = []  # Deferred replies handed out by `later`, in order
        self.cancelled = []  # tags of `later` requests whose client went away
        self.server = ControlServer(self.loop, tmp_path / "control.sock", self.handle)
        self.sockets = []

    def handle(self, request: dict) -> dict:
        self.calls.append((request.get("tag"), time.monotonic()))
        command = request["cmd"]
        if command == "boom":
            raise RuntimeError("a bug in a command")
        if command == "unencodable":
            return {"ok": True, "value": object()}
        if command == "slow":
            time.sleep(WORK)  # the work itself, not synchronisation
        if command == "later":
            return self.later(request)
        return {"ok": True, "cmd": command}

    def later(self, request: dict) -> Deferred:
        """A reply given when the test resolves it, or at its `timeout`."""
        tag = request.get("tag")
        deferred = Deferred(request.get("timeout", 30.0), expire=lambda: {"ok": True, "state": "as it is"},
                            cancel=lambda: self.cancelled.append(tag))
        if request.get("known"):
            deferred.resolve({"ok": True, "known": True})  # the handler knew at once
        self.deferred.append(deferred)
        return deferred

    def connect(self, payload: bytes = b"") -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.connect(self.path)
        sock.setblocking(False)
        if payload:
            sock.sendall(payload)
        return sock

    def run_until(self, predicate, timeout: float = 5.0, message: str = "condition") -> None:
        """Run the loop until `predicate()` holds; fail after `timeout`."""
        deadline = time.monotonic() + timeout

        def check():
            if predicate() or time.monotonic() > deadline:
                self.loop.stop()
            else:
                self.loop.call_later(0.001, check)
        self.loop.call_later(0, check)
        self.loop.run()
        assert predicate(), f"timed out waiting for {message}"

    def run_for(self, seconds: float) -> None:
        self.loop.call_later(seconds, self.loop.stop)
        self.loop.run()

    def replies(self, sock: socket.socket, count: int) -> list:
        """Run the loop until `sock` got `count` reply lines (or EOF); return them."""
        data = bytearray()
        closed = []

        def arrived():
            while select.select([sock], [], [], 0)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    closed.append(True)
                    break
                data.extend(chunk)
            return closed or data.count(b"\n") >= count
        self.run_until(arrived, message=f"{count} replies")
        return [json.loads(line) for line in bytes(data).splitlines()]

    def at_eof(self, sock: socket.socket) -> bool:
        try:
            while True:
                if not sock.recv(65536):
                    return True
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def harness(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_a_bug_in_a_command_is_an_error_reply_and_the_connection_goes_on(harness):
    sock = harness.connect(b'{"cmd": "boom"}\n{"cmd": "unencodable"}\n{"cmd": "ping"}\n')
    boom, unencodable, ping = harness.replies(sock, 3)
    assert boom["ok"] is False and "internal error in 'boom'" in boom["error"]
    assert unencodable["ok"] is False and "unencodable" in unencodable["error"]
    assert ping == {"ok": True, "cmd": "ping"}
    assert harness.server.stats()["internal_error"] == 0


@pytest.mark.parametrize("method", ["_answer", "_flush"])
def test_an_exception_in_a_client_callback_drops_that_client_only(harness, monkeypatch, method):
    original = getattr(ctlserver._Client, method)

    def broken(self, *args):  # _answer(line) sees the request, _flush() the reply
        if any(b"crash" in bytes(buffer) for buffer in (self._outbox, *args)):
            raise RuntimeError("a bug in the server")
        return original(self, *args)
    monkeypatch.setattr(ctlserver._Client, method, broken)
    victim = harness.connect(b'{"cmd": "crash"}\n')
    harness.run_until(lambda: harness.at_eof(victim), message="the client to be dropped")
    assert harness.server.stats()["internal_error"] == 1
    other = harness.connect(b'{"cmd": "ping"}\n')
    assert harness.replies(other, 1) == [{"ok": True, "cmd": "ping"}]


def test_idle_clients_are_dropped_after_the_idle_timeout(harness, monkeypatch):
    monkeypatch.setattr(ctlserver, "IDLE_TIMEOUT", 0.2)
    monkeypatch.setattr(ctlserver, "SWEEP_INTERVAL", 0.05)
    idle = harness.connect()
    started = time.monotonic()
    [reply] = harness.replies(idle, 1)
    assert "no request for" in reply["error"], reply
    assert time.monotonic() - started >= 0.2
    harness.run_until(lambda: harness.at_eof(idle), message="the idle client to be closed")
    assert harness.server.stats()["idle"] == 1


def test_the_client_cap_drops_the_longest_idle_to_let_a_newcomer_in(harness, monkeypatch):
    monkeypatch.setattr(ctlserver, "MAX_CLIENTS", 4)
    idle = [harness.connect() for _ in range(6)]
    harness.run_until(lambda: harness.server.stats()["too_many_clients"] == 2, message="two evictions")
    assert len(harness.server._clients) == 4
    for sock in idle[:2]:  # the oldest two, each told why
        [reply] = harness.replies(sock, 1)
        assert "idle the longest" in reply["error"], reply
    asking = harness.connect(b'{"cmd": "down"}\n')
    assert harness.replies(asking, 1) == [{"ok": True, "cmd": "down"}]
    assert harness.server.stats()["too_many_clients"] == 3
    assert not any(harness.at_eof(sock) for sock in idle[3:])  # the newest idle ones are kept


def test_a_client_whose_request_is_not_read_yet_is_not_evicted_as_idle(harness, monkeypatch):
    monkeypatch.setattr(ctlserver, "MAX_CLIENTS", 2)
    oldest = harness.connect()
    idle = harness.connect()
    harness.run_until(lambda: len(harness.server._clients) == 2, message="two clients")
    newcomer = harness.connect()  # queued for accept() first, so it is accepted first ...
    oldest.sendall(b'{"cmd": "ping"}\n')  # ... before the loop has read this request
    assert harness.replies(oldest, 1) == [{"ok": True, "cmd": "ping"}]
    [reply] = harness.replies(idle, 1)
    assert "idle the longest" in reply["error"], reply
    assert not harness.at_eof(newcomer)


class FailingAccept:
    """The listening socket, with accept() failing as it does when the root is out of fds."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.calls = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self):
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self.real.close()


def test_a_failing_accept_rests_instead_of_spinning(harness):
    real = harness.server._sock
    failing = harness.server._sock = FailingAccept(real)
    waiting = harness.connect(b'{"cmd": "ping"}\n')
    harness.run_for(0.35)
    # Every ACCEPT_RETRY (0.1 s) one try: a spinning loop would have made thousands.
    assert 1 <= failing.calls <= 5, failing.calls
    assert harness.server.stats()["accept_failed"] == failing.calls
    harness.server._sock = real  # fds are back: the waiting client gets its answer
    assert harness.replies(waiting, 1) == [{"ok": True, "cmd": "ping"}]


def test_requests_are_answered_round_robin_and_the_loop_gets_its_turns(harness):
    per_client = 20
    clients = [harness.connect(b"".join(b'{"cmd": "slow", "tag": %d}\n' % tag for _ in range(per_client)))
               for tag in range(3)]
    beats = []

    def beat():  # stands for the supervisor's events: it must run between turns
        beats.append(time.monotonic())
        if len(harness.calls) < 3 * per_client:
            harness.loop.call_later(0, beat)
    harness.loop.call_later(0, beat)
    for sock in clients:
        assert len(harness.replies(sock, per_client)) == per_client
    tags = [tag for tag, _ in harness.calls]
    # Round-robin: while all three wait, every three requests answered are one of each.
    for start in range(0, 3 * per_client - 3, 3):
        assert sorted(tags[start:start + 3]) == [0, 1, 2], tags
    # Work took 3 x 20 x 5 ms, yet the loop never waited much more than a turn's budget.
    busy = [later - earlier for earlier, later in zip(beats, beats[1:])]
    assert max(busy) < ctlserver.TURN_BUDGET + 4 * WORK + 0.05, max(busy)
    assert beats[-1] - beats[0] >= 3 * per_client * WORK


def test_a_client_that_does_not_read_costs_one_request_and_one_reply(harness, monkeypatch):
    monkeypatch.setattr(ctlserver, "STALL_TIMEOUT", 0.1)
    monkeypatch.setattr(ctlserver, "SWEEP_INTERVAL", 0.05)
    deaf = harness.connect()
    request = b'{"cmd": "%s"}\n' % (b"x" * 4000)  # an unknown command: echoed, ~4 KB replies
    sent = 0

    def pushed_until_blocked():
        nonlocal sent
        try:
            while True:
                sent += deaf.send(request)
        except BlockingIOError:
            pass
        for client in harness.server._clients.values():
            assert len(client._inbox) <= MAX_REQUEST + 1 and len(client._outbox) < 2 * len(request)
        return harness.server.stats()["unread_replies"] == 1
    harness.run_until(pushed_until_blocked, message="the deaf client to be refused")
    assert sent >= len(request)


# ----- deferred replies -------------------------------------------------------------


def test_a_deferred_reply_is_sent_when_resolved_and_others_are_answered_meanwhile(harness):
    waiting = harness.connect(b'{"cmd": "later"}\n{"cmd": "ping"}\n')
    harness.run_until(lambda: harness.deferred, message="the deferred request")
    other = harness.connect(b'{"cmd": "ping"}\n')
    assert harness.replies(other, 1) == [{"ok": True, "cmd": "ping"}]
    assert [tag for tag, _ in harness.calls] == [None, None], "the pipelined ping was answered before its turn"
    harness.deferred[0].resolve({"ok": True, "settled": True})
    assert harness.replies(waiting, 2) == [{"ok": True, "settled": True}, {"ok": True, "cmd": "ping"}]
    assert not harness.cancelled


def test_a_reply_known_at_once_is_sent_at_once(harness):
    sock = harness.connect(b'{"cmd": "later", "known": true}\n')
    assert harness.replies(sock, 1) == [{"ok": True, "known": True}]


def test_a_deferred_reply_past_its_deadline_says_how_things_are(harness):
    sock = harness.connect(b'{"cmd": "later", "timeout": 0.2}\n')
    started = time.monotonic()
    assert harness.replies(sock, 1) == [{"ok": True, "state": "as it is", "timed_out": True}]
    assert time.monotonic() - started >= 0.2
    harness.deferred[0].resolve({"ok": True, "too": "late"})  # the owner resolving it later is harmless
    harness.run_for(0.05)
    assert not harness.at_eof(sock) and not harness.cancelled


def test_no_deadline_is_longer_than_the_cap(harness):
    harness.connect(b'{"cmd": "later", "timeout": 1e9}\n')
    harness.run_until(lambda: harness.deferred, message="the deferred request")
    assert harness.deferred[0].timeout == ctlserver.MAX_DEFERRAL


def test_a_waiting_client_is_not_idle(harness, monkeypatch):
    monkeypatch.setattr(ctlserver, "IDLE_TIMEOUT", 0.1)
    monkeypatch.setattr(ctlserver, "SWEEP_INTERVAL", 0.02)
    sock = harness.connect(b'{"cmd": "later"}\n')
    harness.run_for(0.4)
    assert harness.server.stats()["idle"] == 0 and not harness.at_eof(sock)
    harness.deferred[0].resolve({"ok": True})
    assert harness.replies(sock, 1) == [{"ok": True}]


def test_a_client_that_hangs_up_while_waiting_is_forgotten(harness):
    gone = harness.connect(b'{"cmd": "later", "tag": 1}\n')
    harness.run_until(lambda: harness.deferred, message="the deferred request")
    gone.close()
    harness.run_until(lambda: harness.cancelled == [1], message="the wait to be cancelled")
    assert harness.server._clients == {}
    harness.deferred[0].resolve({"ok": True})  # resolved after all: nobody to send it to, no error
    assert harness.server.stats()["internal_error"] == 0


def test_a_client_that_only_shut_down_writing_still_gets_its_answer(harness):
    sock = harness.connect(b'{"cmd": "later"}\n')
    sock.shutdown(socket.SHUT_WR)
    harness.run_until(lambda: harness.deferred, message="the deferred request")
    harness.run_for(0.05)
    assert not harness.cancelled
    harness.deferred[0].resolve({"ok": True, "late": True})
    assert harness.replies(sock, 1) == [{"ok": True, "late": True}]
    harness.run_until(lambda: harness.server._clients == {}, message="the finished client to be closed")


def test_waiting_clients_count_against_the_cap(harness, monkeypatch):
    """So MAX_CLIENTS bounds the waiting requests too; a newcomer still gets in."""
    monkeypatch.setattr(ctlserver, "MAX_CLIENTS", 2)
    waiting = [harness.connect(b'{"cmd": "later", "tag": %d}\n' % tag) for tag in range(2)]
    harness.run_until(lambda: len(harness.deferred) == 2, message="two waiting requests")
    newcomer = harness.connect(b'{"cmd": "ping"}\n')
    assert harness.replies(newcomer, 1) == [{"ok": True, "cmd": "ping"}]
    assert harness.cancelled == [0], "the oldest waiting client was not the one to make room"
    [reply] = harness.replies(waiting[0], 1)
    assert "waited for its answer the longest" in reply["error"], reply
    harness.deferred[1].resolve({"ok": True})
    assert harness.replies(waiting[1], 1) == [{"ok": True}]


def test_closing_the_server_tells_waiting_clients(harness):
    sock = harness.connect(b'{"cmd": "later", "tag": 7}\n')
    harness.run_until(lambda: harness.deferred, message="the deferred request")
    harness.server.close()
    sock.setblocking(True)
    reply = json.loads(sock.makefile("rb").readline())
    assert reply == {"ok": False, "error": "the tree stopped before this request was answered"}
    assert harness.cancelled == [7]
