"""The bare reference: the least a multiprocessing supervisor of N sleepers can do (sentinels + wait).

    python bare.py N [fork|spawn]     # fork by default; spawn is the reference for orch-spawn
"""
import ctypes
import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import wait


LIBC = ctypes.CDLL(None)


class Stop(Exception):
    """Raised by the SIGTERM handler so the blocking wait() returns."""


def on_sigterm(signum, frame):
    raise Stop


def sleeper():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    LIBC.prctl(15, b"bare-leaf", 0, 0, 0)  # PR_SET_NAME: the harness sees the leaf running
    time.sleep(10**9)


def main(n: int, method: str = "fork") -> None:
    ctx = multiprocessing.get_context(method)
    procs = {}

    def start():
        proc = ctx.Process(target=sleeper)
        proc.start()
        procs[proc.sentinel] = proc

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for _ in range(n):
            start()
        while True:
            for sentinel in wait(list(procs)):
                procs.pop(sentinel).join()
                start()  # restart whatever died
    except Stop:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.join()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "fork")
