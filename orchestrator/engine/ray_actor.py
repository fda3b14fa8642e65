"""The Ray actor a Ray worker runs in: calls the worker, captures its output, delivers its signals.

Standard library only, and no import of orch: the Ray supervisor ships this class
to the cluster by value (cloudpickle), so a node needs Ray and the worker's own
module, nothing else. Ray runs each method in a thread of its pool (a threaded
actor): `run` waits for the worker, `next_output` and `deliver` serve the
supervisor meanwhile.

Signals: Python runs signal handlers in the main thread only, and Ray keeps an
actor's main thread for its task loop (a worker run there would block every
other method). So the worker runs in a thread of its own and its signals are
emulated: `signal.signal` called from the worker's thread records the handler
instead of failing, and `deliver` does what the signal would do to a local
worker: the default action of SIGTERM and the like ends it (exit code
-signum, as a process killed by that signal); SIGINT raises KeyboardInterrupt in
the worker; a handler it set is called, and an exception it raises (a
`sys.exit` in the handler, say) is raised in the worker's thread at its next
Python instruction.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
import traceback
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

EXIT_BOOT_FAILED = 78  # as orchestrator.engine.child: restarting cannot help
MAX_CONCURRENCY = 4  # run, next_output, deliver, info at once
POLL_SECONDS = 10.0  # a `next_output` call returns at the latest after this (empty)
# Lines Ray itself writes to a worker's fds to attribute its log files.
_RAY_MARKERS = (b":actor_name:", b":task_name:", b":job_id:", b":task_attempt")
_IGNORED_BY_DEFAULT = {signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG, signal.SIGCONT}


class WorkerActor:
    """One worker instance. Created per start; killed by its supervisor once its output is drained."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._buffers: Dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._ended: Dict[int, bool] = {1: False, 2: False}
        self._marker = b"\0orch-end-" + uuid.uuid4().hex.encode() + b"\0"
        self._code: Optional[int] = None
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._handlers: Dict[int, Any] = {}
        self._injected: Optional[BaseException] = None  # raised by a handler, for the worker's thread
        self._capture()
        self._patch_signal()

    # ----- what the supervisor calls --------------------------------------

    def info(self) -> Dict[str, Any]:
        """Where this actor runs: pid, host, Ray node id and actor id."""
        import socket

        import ray  # present in every actor process

        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "host": socket.gethostname(), "node_id": context.get_node_id(),
                "actor_id": context.get_actor_id()}

    def run(self, blob: Optional[bytes], args: Mapping[str, Any], env: Mapping[str, str],
            boot_error: Optional[str] = None) -> int:
        """Call the worker pickled in `blob` with `args`; its exit code once it ends (or a signal ended it)."""
        os.environ.update(env)
        function = self._load(blob, boot_error)
        if function is not None and not self._done.is_set():  # a SIGTERM may have come first
            self._thread = threading.Thread(target=self._call, args=(function, dict(args)),
                                            name="orch-worker", daemon=True)
            self._thread.start()
        self._done.wait()
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        for fd in (1, 2):
            write_all(fd, self._marker)
        assert self._code is not None
        return self._code

    def next_output(self) -> Tuple[bytes, bytes, bool]:
        """(stdout bytes, stderr bytes, ended): waits until there is output or the worker ended."""
        with self._cond:
            self._cond.wait_for(self._has_news, timeout=POLL_SECONDS)
            out, err = bytes(self._buffers[1]), bytes(self._buffers[2])
            self._buffers[1].clear()
            self._buffers[2].clear()
            return out, err, all(self._ended.values())

    def deliver(self, signum: int) -> None:
        """What signal `signum` does to a local worker, done to this one."""
        handler = self._handlers.get(signum, signal.SIG_DFL)
        if handler == signal.SIG_IGN or (handler == signal.SIG_DFL and signum in _IGNORED_BY_DEFAULT):
            return
        if handler == signal.SIG_DFL:
            if signum == signal.SIGINT:
                self._raise_in_worker(KeyboardInterrupt)
            else:
                self._finish(-signum)  # killed by it; the actor is killed once its output is drained
            return
        frame = sys._current_frames().get(self._thread.ident) if self._thread and self._thread.ident else None
        try:
            handler(signum, frame)
        except BaseException as error:  # what it raised, it raised in the worker
            self._injected = error
            self._raise_in_worker(type(error))

    # ----- the worker ------------------------------------------------------

    def _load(self, blob: Optional[bytes], boot_error: Optional[str]) -> Optional[Callable[..., Any]]:
        try:
            if blob is None:
                raise LookupError(boot_error or "no worker")
            return pickle.loads(blob)
        except BaseException as error:
            print(f"orch: cannot boot: {boot_error or f'the worker cannot be loaded on this node: {error!r}'}",
                  file=sys.stderr, flush=True)
            self._finish(EXIT_BOOT_FAILED)
            return None

    def _call(self, function: Callable[..., Any], args: Dict[str, Any]) -> None:
        try:
            function(**args)
            code = 0
        except SystemExit as exit:
            injected = self._injected  # the async exception is a bare class: its code is here
            code = _exit_code(injected.code if isinstance(injected, SystemExit) else exit.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        self._finish(code)

    def _finish(self, code: int) -> None:
        with self._cond:
            if self._code is None:
                self._code = code
        self._done.set()

    def _raise_in_worker(self, exception: type) -> None:
        thread = self._thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exception))

    def _patch_signal(self) -> None:
        """`signal.signal`/`getsignal` from a thread other than the main one record the worker's handler."""
        real_signal, real_getsignal = signal.signal, signal.getsignal
        handlers = self._handlers

        def set_handler(signum: int, handler: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                return real_signal(signum, handler)
            previous = handlers.get(int(signum), signal.SIG_DFL)
            handlers[int(signum)] = handler
            return previous

        def get_handler(signum: int) -> Any:
            if threading.current_thread() is threading.main_thread():
                return real_getsignal(signum)
            return handlers.get(int(signum), signal.SIG_DFL)

        signal.signal = set_handler
        signal.getsignal = get_handler

    # ----- output ------------------------------------------------------------

    def _capture(self) -> None:
        """fds 1 and 2 become pipes read by a thread each (they were Ray's log files)."""
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        for fd in (1, 2):
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            threading.Thread(target=self._read, args=(fd, read_fd), name=f"orch-fd{fd}", daemon=True).start()
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True)

    def _read(self, fd: int, read_fd: int) -> None:
        pending = b""
        while True:
            try:
                data = os.read(read_fd, 65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            ended = self._marker in pending
            if ended:
                pending = pending[:pending.index(self._marker)]
            keep, pending = _complete_lines(pending, ended)
            with self._cond:
                if not self._ended[fd]:
                    self._buffers[fd] += keep
                    self._ended[fd] = ended
                    self._cond.notify_all()

    def _has_news(self) -> bool:
        return bool(self._buffers[1] or self._buffers[2]) or all(self._ended.values())


def _complete_lines(data: bytes, ended: bool) -> Tuple[bytes, bytes]:
    """(what can be passed on, what waits for the rest of its line), without Ray's marker lines."""
    cut = len(data) if ended else data.rfind(b"\n") + 1
    if cut <= 0 and len(data) < 65536:
        return b"", data
    cut = cut if cut > 0 else len(data)
    lines: List[bytes] = data[:cut].splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(_RAY_MARKERS)), data[cut:]


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr, flush=True)
    return 1


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass


def write_all(fd: int, data: bytes) -> None:
    """Write everything (a blocking pipe); a reader that is gone or a closed fd ends it quietly."""
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:
            return
