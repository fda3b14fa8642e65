"""Workers for the output and exit-code tests, loaded by tree files as a .py plugin."""
import os
import signal
import sys
import time

from orchestrator import hookimpl


def both(out, err):
    """Print `out` on stdout and `err` on stderr, then sleep until signalled."""
    print(out, flush=True)
    print(err, file=sys.stderr, flush=True)
    while True:
        signal.pause()


def partial(text):
    """Write `text` without a final newline, then return (exit 0)."""
    os.write(1, text.encode())


def ret():
    """Return at once (exit 0)."""
    return None


def fail(message):
    """Raise ValueError(message): a traceback and exit 1."""
    raise ValueError(message)


def exit_with(code):
    """Raise SystemExit(code)."""
    raise SystemExit(code)


def chatty(size=100, burst=1000, pause=0.05):
    """Print numbered lines of `size` bytes, `burst` at a time every `pause` seconds, forever."""
    count = 0
    while True:
        lines = [f"line {count + i} {'x' * size}\n" for i in range(burst)]
        count += burst
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        time.sleep(pause)


@hookimpl
def orch_workers():
    return {"out.both": both, "out.partial": partial, "out.ret": ret, "out.fail": fail,
            "out.exit": exit_with, "out.chatty": chatty}
