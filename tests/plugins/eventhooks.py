"""An `orch_event` hook for the events tests, steered by the environment it inherits.

EVENT_HOOK_OUT: a file that gets each event's JSON on a line of its own.
EVENT_HOOK_MODE: "record" (default), "raise" (raise on every `started` event after
recording it), "block" (record, then sleep EVENT_HOOK_SLEEP seconds, default 60, on
the first event of every kind listed in EVENT_HOOK_BLOCK_ON, default "exited"; or,
with EVENT_HOOK_RELEASE set, until that file exists).
"""
import json
import os
import time

from orchestrator import hookimpl

_blocked = set()


@hookimpl
def orch_event(event):
    out = os.environ.get("EVENT_HOOK_OUT")
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(event.to_dict()) + "\n").encode())
        finally:
            os.close(fd)
    mode = os.environ.get("EVENT_HOOK_MODE", "record")
    if mode == "raise" and event.event == "started":
        raise RuntimeError(f"hook refuses {event.path or 'the root'}")
    kinds = os.environ.get("EVENT_HOOK_BLOCK_ON", "exited").split(",")
    if mode == "block" and event.event in kinds and event.event not in _blocked:
        _blocked.add(event.event)
        release = os.environ.get("EVENT_HOOK_RELEASE")
        deadline = time.monotonic() + float(os.environ.get("EVENT_HOOK_SLEEP", "60"))
        while time.monotonic() < deadline and not (release and os.path.exists(release)):
            time.sleep(0.05)


def crash():
    """Exit 3 at once (a crash loop for the queue test)."""
    raise SystemExit(3)


@hookimpl
def orch_workers():
    return {"ev.crash": crash}
