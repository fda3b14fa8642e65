"""The root's side of the control socket: JSON-lines requests served inside the root's loop.

Whatever a client sends, it costs the root a bounded amount of memory, CPU and fds:

- at most MAX_CLIENTS connections; a newcomer makes room by dropping the client doing
  least for us (one already being dropped, else the one idle the longest, checked by
  a read), so clients hoarding idle connections cannot lock `orch down` out: it sends
  its request at once and is answered within a turn or two;
- one request in flight per client: the socket is not read while a complete request
  or a reply waits, so a client that does not read its replies blocks in its own
  send once the kernel's buffer is full; the root holds at most one partial request
  (MAX_REQUEST, counted on the bytes buffered) plus one reply per client;
- requests are answered round-robin, one per client per loop turn, for at most
  TURN_BUDGET seconds a turn, so child exits are handled in between;
- clients idle for IDLE_TIMEOUT, or pipelining requests without reading the replies,
  are dropped; when accept() fails the listening socket rests instead of spinning;
- no exception from a client's callbacks reaches the loop: it drops that client alone;
- a handler may answer later (a `Deferred`, for `wait`): the client keeps its one request
  in flight meanwhile, so it is not idle (the idle timeout spares it) but still counts
  against MAX_CLIENTS, which therefore bounds the waiting requests too. Every deferred
  reply has a deadline, capped at MAX_DEFERRAL, when the handler's `expire()` answers
  with things as they are, marked `"timed_out": true`; a client that hangs up while it
  waits is forgotten and its wait cancelled.

Refusals and drops are counted by reason (`stats()`, shown by `ping`) and logged at
most once a minute per reason.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import termios
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Callable, Deque, Dict, Optional, Union

from orchestrator.root.control import MAX_REQUEST
from orchestrator.engine.loop import Loop, Timer
from orchestrator.engine.output import log

# Connections at once. A CLI client holds one for a single request, so this is plenty;
# it bounds what clients pin: 64 of the 256 fds Supervisor.run keeps spare beside its
# children, and about 64 x (MAX_REQUEST + one reply) of memory.
MAX_CLIENTS = 64
# Connections the kernel queues until we accept them; they cost the root no fd, and a
# client in the queue is sure to get its turn (one refused at connect() must race).
LISTEN_BACKLOG = 1024
# Connections accepted per loop turn: enough to drain a backlog full of junk within
# a few turns (so a real client queued behind it waits little), few enough that a
# flood of connects cannot keep the loop from its other work.
ACCEPTS_PER_TURN = MAX_CLIENTS
# A connection that moves no byte for this long is dropped; a CLI client is done in ms.
IDLE_TIMEOUT = 60.0
# A client that has taken no byte of a reply for this long while more of its requests
# wait is pipelining without reading: it is not answered again, only drained.
STALL_TIMEOUT = 1.0
# How often idle and stalled clients are looked for; only while any are connected.
SWEEP_INTERVAL = 1.0
# Input still read (and thrown away) from a client being dropped, so one that already
# wrote its requests finishes sending and can read our last word instead of EPIPE.
DRAIN_LIMIT = 4 * MAX_REQUEST
# Bytes per recv: a read never allocates much, and a request of MAX_REQUEST takes 16.
RECV_CHUNK = 64 * 1024
# Answering requests stops for the turn after this long: a `tree` (a psutil scan)
# takes a few ms, and a child's exit must not wait behind a queue of them.
TURN_BUDGET = 0.015
# After accept() fails (out of fds or memory) the listening socket, which stays
# readable, is left alone this long: retrying at once would spin the loop.
ACCEPT_RETRY = 0.1
# Each reason is logged at most this often, so clients cannot flood the root's log.
LOG_EVERY = 60.0
# The longest a deferred reply may wait, whatever its handler asked: a waiting client
# pins a connection, so its deadline must come (clients read with a longer timeout).
MAX_DEFERRAL = 3600.0
# Why a client was refused or dropped: the keys of stats().
REASONS = ("too_long", "too_many_clients", "idle", "unread_replies", "accept_failed", "internal_error")


def _nothing() -> None:
    pass


class Deferred:
    """A reply a handler gives later: it returns this, and calls `resolve(reply)` once it knows.

    Whatever happens, the client is answered by `timeout` seconds: then `expire()` says how
    things are, and the server sends that marked `"timed_out": true`. `cancel()` is called
    instead if the client goes away first. Exactly one of resolve, expiry and cancel wins.
    """

    def __init__(self, timeout: float, expire: Callable[[], dict],
                 cancel: Callable[[], None] = _nothing) -> None:
        self.timeout = min(max(0.0, timeout), MAX_DEFERRAL)
        self.expire = expire
        self.cancel = cancel
        self.done = False
        self.early: Optional[dict] = None  # resolved before the server took it over
        self._deliver: Optional[Callable[[dict], None]] = None

    def resolve(self, reply: dict) -> None:
        if self.done:
            return
        self.done = True
        if self._deliver is None:
            self.early = reply
        else:
            self._deliver(reply)

    def attach(self, deliver: Callable[[dict], None]) -> None:
        """The server's side: where the reply goes (at once, if it is already known)."""
        self._deliver = deliver
        if self.early is not None:
            reply, self.early = self.early, None
            deliver(reply)

    def abandon(self) -> None:
        """The client is gone: nobody is waiting for the reply any more."""
        if not self.done:
            self.done = True
            self._deliver = None
            self.cancel()


Handler = Callable[[dict], Union[dict, Deferred]]


class ControlServer:
    """Accepts clients on the 0600 socket and answers their requests in turn."""

    def __init__(self, loop: Loop, path: Path, handler: Handler) -> None:
        self.loop = loop
        self.handler = handler
        self.scratch = bytearray(RECV_CHUNK)  # where drained input goes; never kept
        self._clients: Dict[int, _Client] = {}
        self._ready: Deque[_Client] = deque()  # clients with a request to answer, in turn
        self._serving: Optional[Timer] = None
        self._sweeping: Optional[Timer] = None
        self._resting: Optional[Timer] = None  # accept() failed: when to try again
        self._refusals = _Refusals()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600, never wider
        try:
            self._sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        self._sock.listen(LISTEN_BACKLOG)
        self._sock.setblocking(False)
        loop.add_reader(self._sock.fileno(), self._on_acceptable)

    def stats(self) -> Dict[str, int]:
        """Refusals and drops so far, by reason."""
        return dict(self._refusals.counts)

    def refused(self, reason: str, detail: str) -> None:
        self._refusals.add(reason, detail)

    def close(self) -> None:
        for client in list(self._clients.values()):
            if client.waiting is not None:
                # The root is going away: a waiting client learns why it gets no answer.
                client.send_last_word({"ok": False, "error": "the tree stopped before this request was answered"})
            client.close()
        for timer in (self._serving, self._sweeping, self._resting):
            if timer is not None:
                timer.cancel()
        self.loop.remove_reader(self._sock.fileno())
        self._sock.close()

    # ----- accepting --------------------------------------------------------

    def _on_acceptable(self) -> None:
        try:
            for _ in range(ACCEPTS_PER_TURN):
                if not self._accept():
                    break
        except Exception as error:  # one connection must never take the root down
            self.refused("internal_error", f"accepting a client failed: {error!r}")

    def _accept(self) -> bool:
        """Accept one client; False when there is none (or accept() failed)."""
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: the client sees a reset
            self._rest(error)
            return False
        conn.setblocking(False)
        if len(self._clients) >= MAX_CLIENTS:
            self._evict()
        client = _Client(self, conn)
        self._clients[client.fd] = client
        self.run_guarded(client, client.start)
        self._keep_sweeping()
        return True

    def _evict(self) -> None:
        """Make room for a newcomer: drop the client doing least for us."""
        for victim in sorted(self._clients.values(), key=_Client.eviction_order):
            if victim.draining:
                victim.close()  # already counted when it was refused
                return
            if victim.still_idle():
                self._drop_for_room(victim)
                return
            if len(self._clients) < MAX_CLIENTS:
                return  # that one had gone away: there is room now
        # Every client has a request going: the one first in line makes room all the same.
        self._drop_for_room(min(self._clients.values(), key=_Client.eviction_order))

    def _drop_for_room(self, victim: "_Client") -> None:
        longest = "had waited for its answer the longest" if victim.waiting is not None else "was idle the longest"
        victim.drop("too_many_clients", f"{MAX_CLIENTS} clients connected: dropped the one idle the "
                                        "longest to let a new one in",
                    error=f"{MAX_CLIENTS} clients are connected and this one {longest}")

    def _rest(self, error: OSError) -> None:
        self.refused("accept_failed", f"accept() failed ({error.strerror or error}); "
                                      f"new clients wait {ACCEPT_RETRY:g}s")
        self.loop.remove_reader(self._sock.fileno())
        self._resting = self.loop.call_later(ACCEPT_RETRY, self._wake)

    def _wake(self) -> None:
        self._resting = None
        self.loop.add_reader(self._sock.fileno(), self._on_acceptable)

    def forget(self, client: "_Client") -> None:
        if self._clients.get(client.fd) is client:
            del self._clients[client.fd]

    # ----- answering, in turn -----------------------------------------------

    def queue(self, client: "_Client") -> None:
        """`client` has a request to answer: it joins the round-robin."""
        if not client.queued:
            client.queued = True
            self._ready.append(client)
            self._serve_soon()

    def _serve_soon(self) -> None:
        if self._serving is None:
            self._serving = self.loop.call_later(0, self._serve)

    def _serve(self) -> None:
        """One request per waiting client until the turn's budget is spent; the rest next turn."""
        self._serving = None
        deadline = time.monotonic() + TURN_BUDGET
        for _ in range(len(self._ready)):  # a client that queues again waits for the next turn
            client = self._ready.popleft()
            client.queued = False
            self.run_guarded(client, client.answer_one)
            if time.monotonic() >= deadline:
                break
        if self._ready:
            self._serve_soon()

    # ----- housekeeping -----------------------------------------------------

    def _keep_sweeping(self) -> None:
        if self._sweeping is None and self._clients:
            self._sweeping = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self._sweeping = None
        now = time.monotonic()
        for client in list(self._clients.values()):
            self.run_guarded(client, partial(client.check, now))
        self._keep_sweeping()

    def guarded(self, client: "_Client", callback: Callable[[], None]) -> Callable[[], None]:
        """`callback` for the loop to call; an exception in it drops `client`, not the root."""
        return partial(self.run_guarded, client, callback)

    def run_guarded(self, client: "_Client", callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as error:
            client.drop("internal_error", f"dropped a client after an internal error: {error!r}")


class _Client:
    """One connection: a request is read, answered, and its reply sent before the next."""

    def __init__(self, server: ControlServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.fd = conn.fileno()
        self.closed = False
        self.queued = False  # in the server's round-robin
        self.draining = False  # refused: never answered again, its input thrown away
        now = time.monotonic()
        self.last_active = now  # accepted, or a reply fully sent: the eviction order
        self._last_progress = now  # a byte moved either way: the idle timeout
        self._last_sent = now  # a reply queued or a byte of it taken: stall detection
        self._inbox = bytearray()
        self._has_line = False  # a complete request is in the inbox
        self._outbox = bytearray()
        self._eof = False
        self._drained = 0
        self._reading = False
        self._writing = False
        self.waiting: Optional[Deferred] = None  # the request in flight, answered later
        self._deadline: Optional[Timer] = None  # when `waiting` is answered as it stands
        # Made once: the loop recognises a callback still current by identity.
        self._on_readable = server.guarded(self, self._read)
        self._on_writable = server.guarded(self, self._flush)

    def start(self) -> None:
        # A CLI client has usually sent its request before we accept it: reading it now
        # queues it at once, so the next newcomer never evicts it as idle.
        self._read()

    def eviction_order(self):
        """Sort key; the smallest is dropped first to make room for a newcomer."""
        if self.draining:
            rank = 0  # being dropped anyway
        elif self.queued or self.waiting is not None:
            rank = 3  # a complete request waiting for its answer
        elif self._outbox:
            rank = 2  # waiting for it to read a reply
        else:
            rank = 1  # idle, or half a request
        return rank, self.last_active

    def still_idle(self) -> bool:
        """Idle even after reading what it may have sent since our last select(): a client
        that just sent its request is not evicted before we got to read it."""
        if self.queued or self.waiting is not None or self._outbox or self.closed:
            return False
        self.server.run_guarded(self, self._read)
        return not (self.closed or self._has_line)

    # ----- reading ----------------------------------------------------------

    def _read(self) -> None:
        if self.draining:
            self._discard()
            return
        room = MAX_REQUEST + 1 - len(self._inbox)  # + 1: a full-size request still needs its newline
        try:
            data: Optional[bytes] = self.conn.recv(min(RECV_CHUNK, room))
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""  # reset by the peer: as good as gone
        if data:
            self._last_progress = time.monotonic()
            self._inbox += data
            if b"\n" in data:
                self._has_line = True
            elif len(self._inbox) > MAX_REQUEST:
                self._refuse("too_long", f"refused a request longer than {MAX_REQUEST} bytes",
                             error=f"request longer than {MAX_REQUEST} bytes")
                return
        elif data is not None:
            self._eof = True
            if self.waiting is not None and _hung_up(self.conn):
                self.close()  # gone, not just done sending: nobody will read the answer
                return
            # Only shut down writing: reads stop here (EOF stays readable), so if it hangs
            # up later, that is seen when the answer is sent, by the deadline at the latest.
        self._advance()

    def _discard(self) -> None:
        try:
            count = self.conn.recv_into(self.server.scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if not count:
            self._eof = True
        else:
            self._last_progress = time.monotonic()
            self._drained += count
            if self._drained > DRAIN_LIMIT:
                self.close()
                return
        self._advance()

    # ----- answering --------------------------------------------------------

    def answer_one(self) -> None:
        """Answer the first waiting request; called in turn by the server."""
        if self.closed or self.draining or self._outbox or self.waiting is not None or not self._has_line:
            return
        end = self._inbox.index(b"\n")
        line = bytes(self._inbox[:end])
        del self._inbox[:end + 1]
        self._has_line = b"\n" in self._inbox
        reply = self._answer(line)
        if isinstance(reply, Deferred):
            self._wait_for(reply)
        else:
            self._send(reply)

    def _send(self, reply: dict) -> None:
        self._outbox += _encode(reply)
        self._last_progress = self._last_sent = time.monotonic()
        self._flush()

    # ----- deferred replies -------------------------------------------------

    def _wait_for(self, deferred: Deferred) -> None:
        """Keep the request in flight until `deferred` is resolved or its deadline passes.
        Meanwhile the socket is still read, so a client that hangs up is noticed."""
        self.waiting = deferred
        self._deadline = self.server.loop.call_later(deferred.timeout, self.server.guarded(self, self._expire))
        deferred.attach(self._on_resolved)  # may answer at once: the handler knew already
        self._advance()

    def _on_resolved(self, reply: dict) -> None:
        # Called from whoever resolved it (the root, on a node event): a bug here must
        # drop this client, never reach the caller.
        self.server.run_guarded(self, partial(self._send_deferred, reply))

    def _send_deferred(self, reply: dict) -> None:
        if self.closed or self.waiting is None:
            return
        self._end_wait()
        self._send(reply)

    def _expire(self) -> None:
        """The deadline passed: answer with things as they are now."""
        self._deadline = None
        deferred = self.waiting
        if deferred is None or deferred.done:
            return
        try:
            reply = dict(deferred.expire())
        except Exception as error:  # a bug in the handler's expiry: still an answer
            reply = {"ok": False, "error": f"internal error while waiting: {error!r}"}
        reply["timed_out"] = True
        deferred.resolve(reply)

    def _end_wait(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.waiting = None

    def _cancel_wait(self) -> None:
        """Nobody will read the answer: forget the wait, and tell its owner."""
        deferred = self.waiting
        if deferred is not None:
            self._end_wait()
            deferred.abandon()

    def _answer(self, line: bytes) -> Union[dict, Deferred]:
        try:
            request = json.loads(line)
        except RecursionError:
            return {"ok": False, "error": "request is not JSON this root accepts: nested too deeply"}
        except Exception as error:  # ValueError, UnicodeDecodeError, MemoryError...
            return {"ok": False, "error": f"request is not JSON: {error}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object like {"cmd": "tree"}'}
        try:
            return self.server.handler(request)
        except Exception as error:  # a bug in one command must not take the root down
            return {"ok": False, "error": f"internal error in {request['cmd']!r}: {error!r}"}

    def _flush(self) -> None:
        try:
            sent = self.conn.send(self._outbox, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()  # the client went away: what it still asked goes unanswered
            return
        if sent:
            del self._outbox[:sent]
            self._last_progress = self._last_sent = time.monotonic()
            if not self._outbox:
                self.last_active = self._last_sent
        self._advance()

    def _advance(self) -> None:
        """Watch for what this client can do next, queue its next request, or close it."""
        if self.closed:
            return
        if self.draining:
            reading = not self._eof
        else:
            # While a reply is deferred this still reads: that is how a hang-up is seen.
            reading = not (self._eof or self._outbox or self._has_line)
        self._watch(reading, writing=bool(self._outbox))
        busy = self._outbox or self.waiting is not None
        if self._eof and not busy and (self.draining or not self._has_line):
            self.close()
        elif self._has_line and not busy and not self.draining:
            self.server.queue(self)

    def _watch(self, reading: bool, writing: bool) -> None:
        loop = self.server.loop
        if reading != self._reading:
            self._reading = reading
            if reading:
                loop.add_reader(self.fd, self._on_readable)
            else:
                loop.remove_reader(self.fd)
        if writing != self._writing:
            self._writing = writing
            loop.set_writer(self.fd, self._on_writable if writing else None)

    # ----- limits -----------------------------------------------------------

    def check(self, now: float) -> None:
        """The server's periodic look: drop this client if idle, refuse it if stalled."""
        if self.waiting is not None:
            return  # we owe it an answer: not idle, and its deadline bounds the wait
        if now - self._last_progress >= IDLE_TIMEOUT:
            if self.draining:
                self.close()
            elif self._outbox:
                self.drop("unread_replies", f"dropped a client that read no reply for {IDLE_TIMEOUT:g}s")
            else:
                self.drop("idle", f"dropped a client idle for {IDLE_TIMEOUT:g}s",
                          error=f"no request for {IDLE_TIMEOUT:g}s; the connection is closed")
        elif (self._outbox and not self.draining and now - self._last_sent >= STALL_TIMEOUT
              and (self._has_line or _unread_bytes(self.conn) > 0)):
            self._refuse("unread_replies", "stopped answering a client that sends requests "
                                           "but does not read the replies")

    def _refuse(self, reason: str, detail: str, error: Optional[str] = None) -> None:
        """Answer this client no more: send `error` if given, drain its input, then close."""
        self.server.refused(reason, detail)
        self._cancel_wait()
        self.draining = True
        self._inbox = bytearray()
        self._has_line = False
        if error is not None:
            self._outbox += _encode({"ok": False, "error": f"{error}; the connection is closed"})
        self._flush()

    def drop(self, reason: str, detail: str, error: Optional[str] = None) -> None:
        """Close now, counted under `reason`; `error` is sent if it fits without waiting."""
        self.server.refused(reason, detail)
        if error is not None:
            self.send_last_word({"ok": False, "error": error})
        self.close()

    def send_last_word(self, reply: dict) -> None:
        """Send `reply` if it fits without waiting (and no other reply is half sent)."""
        if self._outbox or self.closed:
            return
        try:
            self.conn.send(_encode(reply), socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_wait()
        # Unwatch before closing: a new client may get the same fd number at once.
        self._watch(reading=False, writing=False)
        try:
            self.conn.close()
        except OSError:
            pass
        self._inbox = bytearray()
        self._outbox = bytearray()
        self.server.forget(self)


class _Refusals:
    """Counts refusals by reason; logs each reason at most once per LOG_EVERY."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(REASONS, 0)
        self._logged: Dict[str, float] = {}

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        last = self._logged.get(reason)
        if last is None or now - last >= LOG_EVERY:
            self._logged[reason] = now
            log(f"control socket: {detail} ({reason}: {self.counts[reason]} so far; "
                f"logged at most once a minute)")


def _encode(response: dict) -> bytes:
    try:
        return json.dumps(response).encode() + b"\n"
    except Exception as error:  # a handler returned something JSON cannot say
        return json.dumps({"ok": False, "error": f"internal error: unencodable reply: {error!r}"}).encode() + b"\n"


def _hung_up(conn: socket.socket) -> bool:
    """The peer closed its socket, not just its sending side (a client may shut down
    writing after its request and still read the reply)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _unread_bytes(conn: socket.socket) -> int:
    """Bytes the client sent that still wait in the kernel, unread by us."""
    try:
        return struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0
