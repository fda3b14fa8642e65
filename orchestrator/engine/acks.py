"""A reload's acknowledgement: reported upward once, when the whole subtree has applied it.

A supervisor applying generation N is done when its own stops and starts are
done and every supervisor child it handed a part of the spec to has acknowledged
N (or exited: it restarts with the spec it was handed, or not at all). A newer
generation supersedes an unfinished one, which is then never acknowledged: the
root only ever waits for the latest.
"""
from __future__ import annotations

from typing import Callable, Iterable, Set


class Acknowledgements:
    """Tracks the generation being applied; calls `on_complete(generation)` once it is done."""

    def __init__(self, on_complete: Callable[[int], None]) -> None:
        self._on_complete = on_complete
        self.generation = 0  # the last one begun; 0 before any reload
        self._children: Set[str] = set()  # supervisor children yet to acknowledge it
        self._local = False  # our own stops and starts are still running
        self._open = False  # begun and not yet acknowledged

    def begin(self, generation: int, children: Iterable[str]) -> None:
        """Start applying `generation`, waiting for our own part and for `children` (paths)."""
        self.generation = generation
        self._children = set(children)
        self._local = True
        self._open = True

    def local_done(self) -> None:
        """Our own stops and starts for the current generation are done."""
        self._local = False
        self._check()

    def child_applied(self, path: str, generation: int) -> None:
        """A supervisor child acknowledged `generation`; an older one's word is stale."""
        if generation == self.generation:
            self.child_done(path)

    def child_done(self, path: str) -> None:
        """The child at `path` has nothing more to apply: it acknowledged, or it exited."""
        if path in self._children:
            self._children.discard(path)
            self._check()

    def _check(self) -> None:
        if self._open and not self._local and not self._children:
            self._open = False
            self._on_complete(self.generation)
