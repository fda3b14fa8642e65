"""What a tree or node name may be. Alone, so the CLI's control path checks names
without importing the spec model."""
from __future__ import annotations

import re
from typing import Optional

NAME = re.compile(r"[A-Za-z0-9_.-]+")
# A name is also a directory and file name (run directory, titles, log files):
# it must be one ordinary path component, never '.', '..' or a hidden or option-like one.
NAME_MAX = 100


def name_problem(value: str) -> Optional[str]:
    """Why `value` is not a valid tree or node name, or None."""
    if not NAME.fullmatch(value):
        return f"name {value!r} may only use letters, digits, '_', '.' and '-'"
    if value[0] in ".-":
        return (f"name {value!r} must start with a letter, digit or '_' (a name is used as a "
                "directory and file name, so '.', '..' and names like '.x' or '-x' are refused)")
    if len(value) > NAME_MAX:
        return f"name is {len(value)} characters long; at most {NAME_MAX} are allowed"
    return None
