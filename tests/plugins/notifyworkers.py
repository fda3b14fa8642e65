"""Workers that speak sd_notify through `orchestrator.worker`, for tests/process/test_readiness.py."""
import os
import signal
import time

from orchestrator import hookimpl
from orchestrator import worker


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _forever():
    while True:
        signal.pause()


def never_ready_stuck_here():
    """Never sends READY=1 (its name shows in the faulthandler stack)."""
    _forever()


def late_ready(delay, log):
    """READY=1 after `delay` seconds; the time it sent it goes to `log`."""
    time.sleep(delay)
    _append(log, f"ready {time.time()!r}")
    assert worker.ready()
    _forever()


def stops_heartbeating_here():
    _forever()


def heartbeats(beats, interval):
    """Ready, `beats` heartbeats `interval` apart, then silence."""
    assert worker.ready()
    for _ in range(beats):
        time.sleep(interval)
        assert worker.heartbeat()
    stops_heartbeating_here()


def with_status(text):
    """Ready, with a status line."""
    assert worker.status(text)
    assert worker.ready()
    _forever()


def extended(extend, delay, log):
    """Ask for `extend` seconds more, then READY=1 after `delay` seconds."""
    assert worker.extend_timeout(extend)
    time.sleep(delay)
    _append(log, f"ready {time.time()!r}")
    assert worker.ready()
    _forever()


def env_probe(log):
    """Record the sd_notify environment, then ready."""
    _append(log, " ".join(f"{key}={os.environ.get(key)}" for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                                      "WATCHDOG_PID")))
    _append(log, f"pid={os.getpid()}")
    worker.ready()
    _forever()


@hookimpl
def orch_workers():
    return {
        "n.never_ready": never_ready_stuck_here, "n.late_ready": late_ready, "n.heartbeats": heartbeats,
        "n.status": with_status, "n.extended": extended, "n.env_probe": env_probe,
    }
