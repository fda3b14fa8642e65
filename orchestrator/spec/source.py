"""Tree file bytes -> TOML dict plus a source map from key paths to line numbers."""
from __future__ import annotations

import bisect
import os
import re
import stat
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import attrs

from orchestrator.errors import InvalidInput, Problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib

MAX_BYTES = 1 << 20
# Beyond this depth inside one value we stop recording positions and skip flatly,
# so a pathological `[[[[...]]]]` cannot exhaust the stack.
_MAX_VALUE_DEPTH = 64

KeyPath = Tuple[Any, ...]


@attrs.frozen
class SourceMap:
    """Key path -> 1-based line; `()` is the document, `("children", 0)` a header."""

    lines: Mapping[KeyPath, int] = attrs.field(factory=dict)

    def line(self, path: KeyPath) -> Optional[int]:
        """The line of `path`, else of its closest known ancestor."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return None


def load_source(path: str, text: Optional[str] = None) -> Tuple[Dict[str, Any], SourceMap]:
    """Read and parse a tree file (or `text`, already read from it by a client);
    raise InvalidInput naming `path` as given."""
    if text is None:
        text = read_text(path)
    return parse_source(text, path)


def read_text(path: str) -> str:
    """The tree file's text, for a command-line process: any readable file will do,
    a pipe from `<(...)` or /dev/stdin included (blocking is the caller's own business)."""
    return _decode(_read_bytes(path), path)


def read_regular_text(path: str) -> str:
    """The tree file's text, for a long-running process that must never block: only a
    regular file is read, opened without blocking (a FIFO would hang open() or read())."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_problem(path, exc) from None
    except ValueError as exc:  # an embedded NUL in the path
        raise _invalid(path, None, f"cannot read the tree file: {exc}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _invalid(path, None, f"is {_file_kind(mode)}, not a regular file; orch reads "
                                       "tree files only from regular files here") from None
        return _decode(_read_limited(handle, path), path)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def parse_source(text: str, file: str) -> Tuple[Dict[str, Any], SourceMap]:
    """Parse TOML text; syntax errors become one Problem at their line."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, message = _split_decode_error(exc, text)
        raise _invalid(file, line, f"invalid TOML: {message}") from None
    except RecursionError:
        raise _invalid(file, None, "invalid TOML: values are nested too deeply") from None
    return document, scan_lines(text)


def scan_lines(text: str) -> SourceMap:
    """Map every table, array element and key of (valid) TOML text to its line."""
    return SourceMap(_Scanner(text).scan())


def _invalid(file: str, line: Optional[int], message: str) -> InvalidInput:
    return InvalidInput([Problem(file, line, None, message)])


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return _read_limited(handle, path)
    except OSError as exc:
        raise _open_problem(path, exc) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise _invalid(path, None, f"cannot read the tree file: {exc}") from None


def _read_limited(handle: Any, path: str) -> bytes:
    # Read one byte past the limit: enough to know it is too big, even for
    # pipes and special files whose size stat() cannot tell.
    try:
        data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _open_problem(path, exc) from None
    if len(data) > MAX_BYTES:
        raise _invalid(path, None, _too_big(_size_of(handle, len(data))))
    return data


def _open_problem(path: str, exc: OSError) -> InvalidInput:
    if isinstance(exc, IsADirectoryError):
        return _invalid(path, None, "is a directory, not a tree file")
    if isinstance(exc, FileNotFoundError):
        return _invalid(path, None, "no such file")
    if isinstance(exc, PermissionError):
        return _invalid(path, None, "cannot read the tree file: permission denied")
    return _invalid(path, None, f"cannot read the tree file: {exc.strerror or exc}")


def _size_of(handle: Any, at_least: int) -> int:
    try:
        return max(os.fstat(handle.fileno()).st_size, at_least)
    except OSError:
        return at_least


def _too_big(size: int) -> str:
    # Below 2 MB "1.0 MB" would read as if it were within the 1 MiB limit.
    shown = f"{size / 1e6:.1f} MB" if size >= 2_000_000 else f"{size:,} bytes"
    return f"tree file is {shown}; a tree file may be at most 1 MiB"


def _decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        message = f"not UTF-8 text: byte 0x{bad} at offset {exc.start} cannot be decoded"
        raise _invalid(path, line, message) from None
    # Editors on Windows may prepend a byte order mark; TOML does not allow one.
    return text[1:] if text.startswith("\ufeff") else text


_AT_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = re.compile(r"\s*\(at end of document\)$")


def _split_decode_error(exc: Exception, text: str) -> Tuple[int, str]:
    """`Invalid value (at line 3, column 5)` -> (3, "Invalid value (column 5)")."""
    message = str(exc)
    found = _AT_POSITION.search(message)
    if found:
        return int(found.group(1)), f"{message[: found.start()]} (column {found.group(2)})"
    found = _AT_END.search(message)
    last_line = text.rstrip("\n").count("\n") + 1
    if found:
        return last_line, f"{message[: found.start()]} (at end of file)"
    return getattr(exc, "lineno", None) or last_line, message


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LITERAL = re.compile(r"'[^'\n]*'")
_ML_BASIC = re.compile(r'"""(?:[^\\]|\\.)*?""""{0,2}', re.S)
_ML_LITERAL = re.compile(r"'''.*?''''{0,2}", re.S)
_SCALAR = re.compile(r"[^,\]}#\n]+")
_STRINGS = (_ML_BASIC, _ML_LITERAL, _BASIC, _LITERAL)


class _Scanner:
    """A lexical walk over TOML that tomllib already accepted, recording lines.

    It never raises on odd input: anything it does not understand is skipped to
    the end of the line, which only costs precision in the map.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: Dict[KeyPath, int] = {(): 1}
        self.array_sizes: Dict[KeyPath, int] = {}  # array-of-tables path -> elements
        self.table: KeyPath = ()

    def scan(self) -> Dict[KeyPath, int]:
        while self._skip_blank() < len(self.text):
            start = self.pos
            if self._peek() == "[":
                self._header()
            else:
                self._key_value(self.table, 0)
            self._end_statement(start)
        return self.lines

    def _line(self) -> int:
        return bisect.bisect_left(self.newlines, self.pos) + 1

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def _skip_ws(self) -> None:
        while self._peek() in (" ", "\t"):
            self.pos += 1

    def _skip_blank(self) -> int:
        """Skip whitespace, newlines and comments; return the new position."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "#":
                self._skip_line()
            elif char in " \t\r\n":
                self.pos += 1
            else:
                break
        return self.pos

    def _skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _end_statement(self, start: int) -> None:
        self._skip_ws()
        if self._peek() not in ("", "\n", "\r") or self.pos == start:
            self._skip_line()

    def _header(self) -> None:
        line = self._line()
        append = self.text.startswith("[[", self.pos)
        self.pos += 2 if append else 1
        keys = self._key()
        self._skip_ws()
        self.pos += 2 if append else 1
        self.table = self._resolve(keys, append, line)

    def _resolve(self, keys: List[str], append: bool, line: int) -> KeyPath:
        """Turn a header's keys into a path, indexing into arrays of tables."""
        path: KeyPath = ()
        for index, key in enumerate(keys):
            path += (key,)
            self._record(path, line)
            if append and index == len(keys) - 1:
                size = self.array_sizes.get(path, 0)
                self.array_sizes[path] = size + 1
                path += (size,)
            elif path in self.array_sizes:
                path += (self.array_sizes[path] - 1,)
        # An explicit header beats an earlier implicit mention of the same table.
        self.lines[path] = line
        return path

    def _key(self) -> List[str]:
        parts = [self._simple_key()]
        self._skip_ws()
        while self._peek() == ".":
            self.pos += 1
            parts.append(self._simple_key())
            self._skip_ws()
        return parts

    def _simple_key(self) -> str:
        self._skip_ws()
        for pattern in (_BARE_KEY, _BASIC, _LITERAL):
            found = pattern.match(self.text, self.pos)
            if found:
                self.pos = found.end()
                return _key_text(found.group())
        return ""

    def _key_value(self, prefix: KeyPath, depth: int) -> None:
        line = self._line()
        keys = self._key()
        for end in range(1, len(keys)):
            self._record(prefix + tuple(keys[:end]), line)
        self._skip_ws()
        if self._peek() != "=":
            return
        self.pos += 1
        self._skip_ws()
        self._value(prefix + tuple(keys), depth)

    def _value(self, path: KeyPath, depth: int) -> None:
        self._record(path, self._line())
        char = self._peek()
        if char in ("[", "{") and depth >= _MAX_VALUE_DEPTH:
            self._skip_nested()
        elif char == "[":
            self._array(path, depth)
        elif char == "{":
            self._inline_table(path, depth)
        else:
            self._skip_scalar()

    def _skip_scalar(self) -> None:
        for pattern in _STRINGS + (_SCALAR,):
            found = pattern.match(self.text, self.pos)
            if found:
                self.pos = found.end()
                return

    def _array(self, path: KeyPath, depth: int) -> None:
        self.pos += 1
        index = 0
        while self._skip_blank() < len(self.text) and self._peek() != "]":
            start = self.pos
            self._value(path + (index,), depth + 1)
            index += 1
            self._skip_blank()
            if self._peek() == "," or self.pos == start:
                self.pos += 1
        self.pos += 1

    def _inline_table(self, path: KeyPath, depth: int) -> None:
        self.pos += 1
        while self._skip_blank() < len(self.text) and self._peek() != "}":
            start = self.pos
            self._key_value(path, depth + 1)
            self._skip_blank()
            if self._peek() == "," or self.pos == start:
                self.pos += 1
        self.pos += 1

    def _skip_nested(self) -> None:
        """Skip one array or inline table without recursion or recording."""
        open_count = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in "\"'":
                start = self.pos
                self._skip_scalar()
                self.pos = max(self.pos, start + 1)
                continue
            if char == "#":
                self._skip_line()
                continue
            self.pos += 1
            open_count += (char in "[{") - (char in "]}")
            if open_count == 0:
                return


def _key_text(raw: str) -> str:
    """The key a quoted or bare key token stands for, escapes decoded."""
    if raw[0] == "'":
        return raw[1:-1]
    if raw[0] != '"':
        return raw
    if "\\" not in raw:
        return raw[1:-1]
    try:
        return str(tomllib.loads(f"k = {raw}")["k"])
    except tomllib.TOMLDecodeError:
        return raw[1:-1]
