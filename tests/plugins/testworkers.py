"""Workers for the test suite, loaded by tree files as a .py plugin (so spawn must find them)."""
import os
import signal
import sys
import time

from orchestrator import hookimpl


def _append(path, line):
    # O_APPEND writes of one short line are atomic, so concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def sleep():
    """Sleep until signalled."""
    while True:
        signal.pause()


def exit_code(code=0, after=0.0):
    """Exit with `code` after `after` seconds."""
    time.sleep(after)
    sys.exit(code)


def fail():
    """Raise an exception (exit 1 with a traceback)."""
    raise RuntimeError("boom from the test worker")


def record(log, label):
    """Append 'start LABEL' now and 'stop LABEL' on SIGTERM, then exit 0."""
    def on_term(signum, frame):
        _append(log, f"stop {label}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    _append(log, f"start {label}")
    while True:
        signal.pause()


def ignore_term():
    """Ignore SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()


def crash_first(marker, code=1):
    """Exit `code` the first time (creating `marker`), then run normally."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(code)
    while True:
        signal.pause()


def fork_helper(pidfile):
    """Fork a helper process that sleeps; write its pid; then sleep."""
    pid = os.fork()
    if pid == 0:
        while True:
            signal.pause()
    _append(pidfile, str(pid))
    while True:
        signal.pause()


def say(text):
    """Print `text` (no newline at the end of the last line) then sleep."""
    sys.stdout.write(text)
    sys.stdout.flush()
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {
        "t.sleep": sleep, "t.exit": exit_code, "t.fail": fail, "t.record": record,
        "t.ignore_term": ignore_term, "t.crash_first": crash_first, "t.fork_helper": fork_helper,
        "t.say": say,
    }
