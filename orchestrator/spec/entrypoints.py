"""The `orch` entry points of installed packages, read from their `entry_points.txt`.

`importlib.metadata` would do it, but importing it pulls in email, zipfile (with
zlib, bz2 and lzma), csv, socket, tempfile and more: 1.6 MiB and 11 mappings more in
the root, which every worker it forks copies and tears down, for a scan of a few
small text files (bench/analysis.md). This reads what `importlib.metadata` reads
for the same sys.path, with its rules: a `*.dist-info` or `*.egg-info` directory in
each sys.path directory, the first of one distribution name wins, the file parsed
as `importlib.metadata` parses it (trimmed lines, `#` comments, `[group]` headers,
`name = module:attr [extras]`). A zip on sys.path (an egg) is handed to
`importlib.metadata` itself, so only a tree that needs it pays for it.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Iterator, List, NamedTuple, Optional, Set

# importlib.metadata.EntryPoint.pattern
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_SUFFIXES = (".dist-info", ".egg-info")


class EntryPoint(NamedTuple):
    name: str
    value: str  # `module` or `module:attr.path`, extras and all, as written
    source: str  # the package's dist-info or egg-info directory, or its name (from a zip)

    def distribution(self) -> str:
        """The package's name, for messages: `Name:` of its metadata, else its directory's."""
        return _metadata_name(self.source) or _stem_name(os.path.basename(self.source)) or self.source

    def load(self) -> Any:
        """Import the module and return the attribute the value names (as EntryPoint.load)."""
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"entry point value {self.value!r} is not `module` or `module:attribute`")
        found: Any = importlib.import_module(match.group("module"))
        for part in filter(None, (match.group("attr") or "").split(".")):
            found = getattr(found, part)
        return found


def entry_points(group: str) -> List[EntryPoint]:
    """Every entry point of `group` among the distributions on sys.path, in path order."""
    found: List[EntryPoint] = []
    seen: Set[str] = set()
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        directory = entry or "."
        if os.path.isdir(directory):
            found += _from_directory(directory, group, seen)
        elif os.path.isfile(directory):
            found += _from_archive(directory, group, seen)
    return found


def _from_directory(directory: str, group: str, seen: Set[str]) -> Iterator[EntryPoint]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for name in names:
        if not name.endswith(_SUFFIXES):
            continue
        key = _normalized(_stem_name(name))
        if key in seen:
            continue
        seen.add(key)
        info = os.path.join(directory, name)
        text = _read(os.path.join(info, "entry_points.txt"))
        if text is not None:
            yield from _parse(text, group, info)


def _from_archive(path: str, group: str, seen: Set[str]) -> Iterator[EntryPoint]:
    from importlib import metadata

    for dist in metadata.distributions(path=[path]):
        name = dist.metadata["name"] or path
        key = _normalized(name)
        if key in seen:
            continue
        seen.add(key)
        for entry in dist.entry_points:
            if entry.group == group:
                yield EntryPoint(entry.name, entry.value, name)


def _parse(text: str, group: str, source: str) -> Iterator[EntryPoint]:
    section: Optional[str] = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            yield EntryPoint(name.strip(), value.strip(), source)


def _stem_name(directory_name: str) -> str:
    """`foo_bar` of `foo_bar-1.0.dist-info`: the name importlib.metadata dedups by."""
    return os.path.splitext(directory_name)[0].partition("-")[0]


def _metadata_name(info: str) -> Optional[str]:
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info, file), encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    if not line.strip():
                        break  # the headers end at the first blank line
                    if line.lower().startswith("name:"):
                        return line[5:].strip()
        except OSError:
            continue
    return None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()  # PEP 503 with underscores, as importlib.metadata


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None
