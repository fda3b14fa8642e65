"""Workers for tests/process/test_environment.py, loaded as a .py plugin."""
import json
import os
import signal

from orchestrator import hookimpl


def show_env(out, keys=()):
    """Write the process's env (only `keys`), cwd, uid and gid as JSON to `out`, then sleep."""
    report = {"env": {key: os.environ.get(key) for key in keys}, "cwd": os.getcwd(),
              "uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(report, handle)
    os.replace(tmp, out)
    while True:
        signal.pause()


def grow(log, step=4 << 20, every=0.05, limit=1 << 30):
    """Append 'start PID' to `log`, then allocate `step` more bytes every `every` seconds
    (only the first time: a restarted one just sleeps)."""
    import time
    first = not os.path.exists(log)
    with open(log, "a") as handle:
        handle.write(f"start {os.getpid()}\n")
    hog = []
    while first and sum(len(chunk) for chunk in hog) < limit:
        hog.append(bytearray(b"x" * step))
        time.sleep(every)
    while True:
        signal.pause()


def helper_hog(log, size):
    """Fork a helper (same process group) that holds `size` touched bytes; both then sleep."""
    pid = os.fork()
    if pid == 0:
        hog = bytearray(b"x" * size)  # noqa: F841 (kept resident)
        while True:
            signal.pause()
    with open(log, "a") as handle:
        handle.write(f"start {os.getpid()} {pid}\n")
    while True:
        signal.pause()


@hookimpl
def orch_workers():
    return {"e.show_env": show_env, "e.grow": grow, "e.helper_hog": helper_hog}
