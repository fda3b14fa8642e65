"""`orch top`'s terminal: cbreak mode and the signals that must wake or unwind its loop, all put back after."""
from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from typing import Iterator


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys one at a time without echo (ISIG stays: Ctrl-C is SIGINT); the old mode restored."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def wakeups() -> Iterator[int]:
    """A pipe that becomes readable on SIGWINCH (resize), and SIGTERM/SIGHUP turned into a
    clean unwind; every handler and the wakeup fd put back afterwards."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd)
    handlers = {signal.SIGWINCH: signal.signal(signal.SIGWINCH, lambda signum, frame: None),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt),
                signal.SIGHUP: signal.signal(signal.SIGHUP, _interrupt)}
    try:
        yield read_fd
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass
