"""`orch logs` and `orch events`: a tree's log directory shown merged, colored, filtered and followed."""
from __future__ import annotations

import argparse
import io
import json
import re
import select
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, TextIO

import attrs

from orchestrator.cli import logread
from orchestrator.cli import remote
from orchestrator.cli.color import color_of, use_color
from orchestrator.cli.logread import LogFile, Record, Selection, Watcher
from orchestrator.errors import EXIT_OK, ROOT_LABEL, RuntimeFailure, UsageError
from orchestrator.events import Event, rfc3339
from orchestrator.root import control
from orchestrator.spec.logconf import default_log_dir

POLL_INTERVAL = 0.2  # seconds between looks at the files while following
_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# ----- orch logs --------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    count = parse_count(args.lines, None if args.since else args.default_count)
    wanted = Wanted(args.stream, None if args.since is None else time.time() - parse_since(args.since))
    where = locate(args.name, args.file)
    selection = Selection(args.paths)
    files = logread.node_files(where.directory)
    selection.check(where.directory, files, where.nodes)
    opened = {label: LogFile(path) for label, path in files.items() if selection(label)}
    printer = Printer(args.json, use_color(args.no_color), opened)
    try:
        tails = {label: logread.fill_times(logread.take_back(file.backwards(partial=not args.follow),
                                                             _parser(label, where.tree), wanted.keep,
                                                             wanted.older, count))
                 for label, file in opened.items()}
        printer.show(logread.merge(tails.values()))
        if args.follow:
            _follow_logs(where, selection, opened, {label: tail[-1].at for label, tail in tails.items() if tail},
                         lambda batch: printer.show([r for r in logread.merge([batch]) if wanted.keep(r)]))
        return EXIT_OK
    finally:
        for file in opened.values():
            file.close()


@attrs.frozen
class Wanted:
    """Which records `orch logs` shows: of one stream (None: all), newer than `cutoff` (None: any)."""

    stream: Optional[str]
    cutoff: Optional[float]

    def keep(self, record: Record) -> bool:
        return self.stream is None or record.stream == self.stream

    def older(self, record: Record) -> bool:
        """Older than wanted: reading back stops there (a line that does not parse never is)."""
        return self.cutoff is not None and record.ts is not None and record.at < self.cutoff


def _follow_logs(where: Where, selection: Selection, opened: Dict[str, LogFile], last: Dict[str, float],
                 emit: Callable[[List[Record]], None]) -> None:
    """Follow the tailed files and the selected ones that appear later; `last` is each file's
    latest time, for ordering a line that does not parse."""
    def parse(label: str, line: str) -> Record:
        record = logread.parse_record(line, label, where.tree, last.get(label, time.time()))
        last[label] = record.at
        return record

    def discover() -> Dict[str, Path]:
        return {label: path for label, path in logread.node_files(where.directory).items() if selection(label)}

    _follow(Watcher(discover, parse, opened), emit)


def _parser(label: str, tree: str) -> Callable[[str], Record]:
    return lambda line: logread.parse_record(line, label, tree)


class Printer:
    """Records as `path | line` (aligned, colored per path on a terminal) or as JSON."""

    def __init__(self, as_json: bool, color: bool, labels: Iterable[str], out: Optional[TextIO] = None) -> None:
        self.as_json = as_json
        self.color = color
        self.width = max((len(label) for label in labels), default=0)
        self.out = out or sys.stdout

    def show(self, records: List[Record]) -> None:
        for record in records:
            self.out.write(self.format(record) + "\n")
        self.out.flush()

    def format(self, record: Record) -> str:
        if self.as_json:
            return json.dumps(record.to_json())
        self.width = max(self.width, len(record.label))
        label = record.label.ljust(self.width)
        if self.color:
            label = f"\x1b[{color_of(record.label)}m{label}\x1b[0m"
        return f"{label} {'+' if record.continued else '|'} {record.line}"


# ----- orch events ------------------------------------------------------------------------


def cmd_events(args: argparse.Namespace) -> int:
    count = parse_count(args.lines, args.default_count)
    where = locate(args.name, args.file)
    path = where.directory / logread.EVENTS_FILE
    file = LogFile(path)
    try:
        lines = logread.take_back(file.backwards(partial=not args.follow), str, lambda line: bool(line.strip()),
                                  lambda line: False, count)
        show = _show_json_events if args.json else _show_events
        show(lines)
        if args.follow:
            watcher = Watcher(lambda: {}, lambda label, line: line, {"events": file})
            _follow(watcher, lambda batch: show([line for line in batch if line.strip()]))
        return EXIT_OK
    finally:
        file.close()


def _show_events(lines: List[str]) -> None:
    width = max([PATH_WIDTH] + [len(_path_label(line)) for line in lines])
    for line in lines:
        print(event_text(line, width))
    sys.stdout.flush()


def _show_json_events(lines: List[str]) -> None:
    for line in lines:
        if line.lstrip().startswith("{"):
            print(line.strip())
    sys.stdout.flush()


PATH_WIDTH = 12  # the path column's least width; wider when a path shown needs it


def _path_label(line: str) -> str:
    try:
        return json.loads(line).get("path") or ROOT_LABEL
    except (ValueError, AttributeError):
        return ""


def event_text(line: str, width: int = PATH_WIDTH) -> str:
    """`ts  path  event  pid=.. exit_code=.. signal=.. restarts=..  reason`, null fields left out;
    a line that is not an event, as is."""
    try:
        event = Event.from_dict(json.loads(line))
    except (ValueError, TypeError, AttributeError):
        return line
    fields = logread.event_fields(event)
    columns = [rfc3339(event.ts)[:23] + "Z", f"{event.path or ROOT_LABEL:<{width}}", f"{event.event:<10}",
               fields, event.reason or ""]
    return "  ".join(column for column in columns if column).rstrip()



# ----- shared --------------------------------------------------------------------------------


@attrs.frozen
class Where:
    """A tree's name, its log directory, and (lazily) its node paths while it runs."""

    tree: str
    directory: Path
    nodes: Callable[[], List[str]] = lambda: []


def locate(name: Optional[str], file: Optional[str]) -> Where:
    """The log directory: from the tree file, from the running tree, or the default for a stopped one."""
    if file:
        from orchestrator.spec.validate import load_tree

        tree = load_tree(file)
        if name and name != tree.name:
            raise UsageError(f"{file} describes tree {tree.name!r}, not {name!r}")
        return _existing(Where(tree.name, Path(tree.log.dir or default_log_dir(tree.name))))
    if not name:
        name = _only_running()
    try:
        reply = remote.ask(name, {"cmd": "ping"})
    except control.NotRunning:
        return _existing(Where(name, Path(default_log_dir(name))))
    running = name
    return _existing(Where(name, Path(reply.get("log_dir") or default_log_dir(name)),
                           lambda: [node["path"] for node in remote.ask(running, {"cmd": "tree"})["nodes"]
                                    if node["path"] and node.get("kind") != "helper"]))


def _only_running() -> str:
    names = control.running_trees()
    if len(names) == 1:
        return names[0]
    which = f"several trees are running ({', '.join(names)})" if names else "no tree is running"
    raise UsageError(f"{which}; pass --tree NAME or --file FILE to name the tree whose logs to show")


def _existing(where: Where) -> Where:
    if not where.directory.is_dir():
        raise RuntimeFailure(f"tree {where.tree!r} has no logs: {where.directory} does not exist")
    return where


def parse_count(text: Optional[str], default: Optional[int]) -> Optional[int]:
    if text is None:
        return default
    if not text.isdigit():
        raise UsageError(f"-n takes a number of lines (0 or more), got {text!r}")
    return int(text)


def parse_since(text: str) -> float:
    """Seconds from `30s`, `5m`, `2h`, `1d` or plain seconds; UsageError otherwise."""
    match = _SINCE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--since takes a duration such as 30s, 5m, 2h or 1d (or seconds), got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _follow(watcher: Watcher, emit: Callable[[List], None]) -> None:
    """Follow until Ctrl-C (a quiet exit 0) or until the reader of our output is gone."""
    try:
        logread.follow(watcher, emit, POLL_INTERVAL, stop=_reader_gone)
    except KeyboardInterrupt:
        return
    finally:
        watcher.close()
    raise BrokenPipeError("the reader of the output is gone")


def _reader_gone() -> bool:
    """Whether stdout is a pipe or terminal whose other end closed (checked while nothing is printed)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False  # not a real file (a test's capture): nobody to lose
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
