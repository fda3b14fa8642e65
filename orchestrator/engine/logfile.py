"""Log records and the one writer of a log file: lazy open, rotation by rename, errors reported, never raised.

`RecordFormat` turns a worker's lines into records (text or JSON, one per line);
`LogFile` appends whole records to one file, the only process and object that
does so, rotating it itself (`file` -> `file.1` -> ... -> `file.N`), at record
boundaries. Written for throughput: the lines of a chunk read from a pipe share
one timestamp and become records in one C-level pass (bytes.replace), written
with one writev() and never copied again.
"""
from __future__ import annotations

import errno
import json.encoder
import os
import stat
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

from orchestrator.spec.model import LogFormat

# A piece of a line: its bytes, and whether it continues the record before it.
Piece = Tuple[bytes, bool]
Buffer = Union[bytes, memoryview]

# A FIFO never blocks the open (O_NONBLOCK), and a symlink planted where a log file goes
# is refused (O_NOFOLLOW), not followed to a file someone else wanted appended to.
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
_FILE_MODE = 0o640
_DIR_MODE = 0o750
# json.dumps(ensure_ascii=False) encodes a str with exactly this function.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


class Stamps:
    """RFC 3339 UTC timestamps with microseconds, as `events.rfc3339` writes them, but cheap.

    The part up to the second is formatted once per second; only microseconds change.
    """

    def __init__(self) -> None:
        self._second = -1
        self._head = ""

    def now(self) -> str:
        return self.of_micros(time.time_ns() // 1000)

    def of_micros(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._head = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._head}{fraction:06d}Z"


class RecordFormat:
    """Records of one node's lines: `<ts> <stream> <pid> | <line>` or one JSON object per line.

    A piece that continues the line of the record before it (a line cut at MAX_LINE)
    is marked ` + ` instead of ` | `, or `"continued": true` in JSON. Bytes that are
    not UTF-8 become U+FFFD.
    """

    def __init__(self, format: LogFormat, tree: str, path: str) -> None:
        self.format = format
        self._json_node = f'"tree": {_json_string(tree)}, "path": {_json_string(path)}, '

    def records(self, stamp: str, stream: str, pid: int, head: bytes, data: bytes, end: int) -> List[Buffer]:
        """Records of the whole lines `head + data[:end]`, none continuing another, all read at `stamp`.

        `head` is the start of the first line, read before; data[:end] ends in b"\\n".
        The parts to write one after the other: in the common case (text, ASCII)
        the records are never copied once made.
        """
        if self.format is LogFormat.TEXT and data.isascii() and head.isascii():
            prefix = f"{stamp} {stream} {pid} | ".encode()
            # One C pass puts a prefix after every b"\n"; the view stops at the last line end.
            records = data.replace(b"\n", b"\n" + prefix)
            return [prefix + head, memoryview(records)[:records.rfind(b"\n") + 1]]
        return [self.block(stamp, stream, pid, head + data[:end])]

    def block(self, stamp: str, stream: str, pid: int, block: bytes) -> bytes:
        """Records of `block`: whole lines, each ending in b"\\n", none continuing another, all read at `stamp`."""
        if not block:
            return b""
        if self.format is LogFormat.JSON:
            # In slices, so the str forms of a big block stay in the CPU cache.
            return b"".join(self._json(stamp, stream, pid, part, False) for part in line_slices(block))
        prefix = f"{stamp} {stream} {pid} | ".encode()
        records = (prefix + block.replace(b"\n", b"\n" + prefix))[:-len(prefix)]
        # Decoding the block at once is decoding each line: an invalid sequence never spans a b"\n".
        return records if block.isascii() else records.decode("utf-8", "replace").encode()

    def pieces(self, stamp: str, stream: str, pid: int, pieces: Sequence[Piece]) -> bytes:
        """Records of `pieces` (the rare case: some continue the one before)."""
        parts = []
        for line, continued in pieces:
            if self.format is LogFormat.JSON:
                parts.append(self._json(stamp, stream, pid, line + b"\n", continued))
            else:
                mark = "+" if continued else "|"
                record = f"{stamp} {stream} {pid} {mark} ".encode() + line + b"\n"
                parts.append(record if record.isascii() else record.decode("utf-8", "replace").encode())
        return b"".join(parts)

    def _json(self, stamp: str, stream: str, pid: int, block: bytes, continued: bool) -> bytes:
        # Byte for byte json.dumps({...}, ensure_ascii=False) of each record, one C call per line.
        lines = block.decode("utf-8", "replace").split("\n")
        lines.pop()  # after the last b"\n"
        head = f'{{"ts": "{stamp}", {self._json_node}"pid": {pid}, "stream": "{stream}", "line": '
        tail = ', "continued": true}\n' if continued else "}\n"
        return (head + (tail + head).join(map(_json_string, lines)) + tail).encode()


def line_slices(block: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """`block` (whole lines) in slices of about `size` bytes, each cut after a b"\\n"."""
    start = 0
    while start < len(block):
        end = block.find(b"\n", start + size - 1) + 1 or len(block)
        yield block[start:end]
        start = end


class LogFile:
    """The single writer of one log file: appends whole records, rotates by rename, survives errors.

    Opened lazily by the first write (parent directories created). Before each write
    the file at `path` is compared with the one open: deleted or moved away from
    outside, it is created anew. A write that fails drops its records (counted) and
    calls `on_error` once for the episode, and once more when writing works again.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, on_error: Callable[[str], None]) -> None:
        self.path = path
        self.max_bytes = max_bytes  # 0: never rotate
        self.backups = backups  # rotated files kept; 0: the full file is removed
        self._on_error = on_error
        self._fd = -1
        self._identity: Tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the open file
        self._size = 0
        self._failure: Optional[str] = None  # the OS error of the current failure episode
        self._lost = 0  # lines dropped in this episode
        self._torn = False  # a failed write left a record without its end in the file
        self._done = 0  # bytes of the data being written that are in the file

    def write(self, data: bytes) -> None:
        """Append `data`, whole records each ending in b"\\n". Never raises OSError."""
        self.write_parts([data])

    def write_parts(self, parts: Sequence[Buffer]) -> None:
        """Append the records `b"".join(parts)`: in one writev when they fit the file, uncopied."""
        total = sum(map(len, parts))
        if not total:
            return
        data = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else None
        self._done = 0
        try:
            self._check_file()
            if self._torn:  # end the record a failed write cut short, so the next starts a line
                self._write_range(b"\n", 1)
                self._done = 0
            if data is None and (not self.max_bytes or self._size + total <= self.max_bytes):
                self._done = written = os.writev(self._fd, parts)
                self._size += written
                if written == total:
                    parts = ()
            if parts:
                data = data if data is not None else b"".join(parts)
                self._torn = self._done > 0 and data[self._done - 1] != 10
                self._write_records(data)
        except OSError as error:
            data = data if data is not None else b"".join(parts)
            self._failed(error, data.count(b"\n", self._done))
            return
        if self._failure is not None:
            self._recovered()

    def close(self) -> None:
        """Release the fd; a later write opens the file again."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    # ----- writing -------------------------------------------------------------

    def _write_records(self, data: bytes) -> None:
        """Write data[self._done:], rotating at record boundaries when max_bytes would be passed."""
        while self._done < len(data):
            end = self._fitting(data, self._done)
            self._write_range(data, end)
            if end < len(data):
                self._rotate()

    def _fitting(self, data: bytes, start: int) -> int:
        """Where the part of `data` from `start` that goes into the current file ends.

        Whole records only, within max_bytes; an empty file takes at least one
        record, however long. `start` when nothing fits (rotate first).
        """
        if not self.max_bytes or self._size + len(data) - start <= self.max_bytes:
            return len(data)
        room = self.max_bytes - self._size
        cut = data.rfind(b"\n", start, start + room) + 1 if room > 0 else 0
        if cut:
            return cut
        if self._size == 0:
            return data.find(b"\n", start) + 1 or len(data)
        return start

    def _write_range(self, data: bytes, end: int) -> None:
        """Write data[self._done:end], advancing `_done` by what the file took."""
        view = memoryview(data)[self._done:end]
        while view:
            written = os.write(self._fd, view)
            if written <= 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            self._size += written
            self._done += written
            self._torn = view[written - 1] != 10  # the file ends inside a record until the rest is in
            view = view[written:]

    def _check_file(self) -> None:
        """Open the file if it is not; reopen it if the path no longer names the open file."""
        if self._fd >= 0:
            try:
                found = os.stat(self.path)
            except FileNotFoundError:
                found = None
            if found is not None and (found.st_dev, found.st_ino) == self._identity:
                self._size = found.st_size  # another hand may have truncated it
                return
            self.close()
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or ".", mode=_DIR_MODE, exist_ok=True)
            fd = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        except OSError:
            os.close(fd)
            raise
        self._fd, self._identity, self._size = fd, (info.st_dev, info.st_ino), info.st_size
        self._torn = self._torn and info.st_size > 0

    def _rotate(self) -> None:
        """file.N-1 -> file.N ... file -> file.1 (or remove the file when no backups are kept)."""
        self.close()
        for number in range(self.backups - 1, 0, -1):
            try:
                os.rename(f"{self.path}.{number}", f"{self.path}.{number + 1}")
            except FileNotFoundError:
                pass
        try:
            if self.backups:
                os.rename(self.path, f"{self.path}.1")
            else:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._torn = False  # a torn record now ends a rotated file; the new file starts clean
        self._open()

    # ----- failures ------------------------------------------------------------

    def _failed(self, error: OSError, lines: int) -> None:
        self._lost += lines
        self.close()  # the next write opens again: the file or its directory may be back
        if self._failure is None:
            self._failure = error.strerror or str(error)
            self._on_error(f"cannot write {self.path}: {self._failure}; dropping its lines until it works again")

    def _recovered(self) -> None:
        lost, reason = self._lost, self._failure
        self._failure, self._lost = None, 0
        self._on_error(f"lost {lost} line{'s' if lost != 1 else ''} of {self.path}: {reason}")
