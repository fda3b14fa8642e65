"""Problems with a location, and the exit codes every command uses."""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure: the tree gave up, a process could not be stopped
EXIT_USAGE = 2  # bad input: invalid tree file, unknown command or node

ROOT_LABEL = "(root)"


# A NamedTuple, not attrs: every command imports this module, `orch tree` among them.
class Problem(NamedTuple):
    """One thing wrong with the user's input, rendered `FILE:LINE: node/path: message`."""

    file: str
    line: Optional[int]
    path: Optional[str]  # node path; "" is the root, None when no node applies
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.path is None:
            return f"{where}: {self.message}"
        return f"{where}: {self.path or ROOT_LABEL}: {self.message}"


class InvalidInput(Exception):
    """Every problem found in one input, raised once after collecting them all."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: List[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RuntimeFailure(Exception):
    """A failure of the running system (exit code 1), with a one-line message."""


class UsageError(Exception):
    """Bad command-line use that argparse cannot see (exit 2)."""
