"""Workers for the Ray tests (tests/process/test_ray.py), loaded as a .py plugin: shipped to the actors by value."""
import os
import signal
import sys
import time

from orchestrator import hookimpl


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def sleep(label="", log=""):
    """Print where it runs, append 'start LABEL PID' to `log`, then sleep until stopped."""
    print(f"ray worker {label} pid {os.getpid()}", flush=True)
    if log:
        _append(log, f"start {label} {os.getpid()}")
    while True:
        time.sleep(0.2)


def graceful(log, label=""):
    """Append 'stop LABEL' on SIGTERM (a handler of its own), then exit 0."""
    def on_term(signum, frame):
        _append(log, f"stop {label}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    _append(log, f"start {label} {os.getpid()}")
    while True:
        time.sleep(0.1)


def say(text="hello", then_exit=None):
    """Print `text` to stdout and to stderr; exit with `then_exit` if given, else sleep."""
    print(f"out: {text}", flush=True)
    print(f"err: {text}", file=sys.stderr, flush=True)
    if then_exit is not None:
        sys.exit(then_exit)
    while True:
        time.sleep(0.2)


def fail():
    """Raise: exit 1 with the traceback in the log."""
    raise RuntimeError("boom from a ray worker")


@hookimpl
def orch_workers():
    return {"r.sleep": sleep, "r.graceful": graceful, "r.say": say, "r.fail": fail}
