"""The `orch logs` and `orch events` argument parsers. Their work is in logs.py, imported
only when one of them runs: every other command (`orch tree` most of all) starts faster."""
from __future__ import annotations

import argparse

DEFAULT_LINES = 10
DEFAULT_EVENTS = 20


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = commands.add_parser("logs", help="show the output of a tree's nodes, merged by time")
    logs.add_argument("paths", nargs="*", metavar="PATH",
                      help="node paths (a supervisor means every node below it; default: the whole tree)")
    _add_common(logs, f"lines per node (default {DEFAULT_LINES}, or all with --since)")
    logs.add_argument("--since", metavar="DURATION", help="only records newer than this: 30s, 5m, 2h, 1d")
    logs.add_argument("--stream", choices=("stdout", "stderr"), help="only this stream")
    logs.add_argument("--json", action="store_true", help="one JSON record per line")
    logs.add_argument("--no-color", action="store_true", help="never color the node paths")
    logs.set_defaults(func=_cmd_logs, default_count=DEFAULT_LINES)

    events = commands.add_parser("events", help="show what happened to a tree's nodes (events.jsonl)")
    _add_common(events, f"how many events (default {DEFAULT_EVENTS})")
    events.add_argument("--json", action="store_true", help="the events as written, one JSON object per line")
    events.set_defaults(func=_cmd_events, default_count=DEFAULT_EVENTS)


def _add_common(parser: argparse.ArgumentParser, lines_help: str) -> None:
    parser.add_argument("--tree", "-t", dest="name", metavar="NAME",
                        help="tree name (default: the only running tree)")
    parser.add_argument("--file", metavar="FILE", help="tree file (finds the logs of a stopped tree)")
    parser.add_argument("-n", "--lines", metavar="N", help=lines_help)
    parser.add_argument("-f", "--follow", action="store_true", help="keep showing new records until Ctrl-C")


def _cmd_logs(args: argparse.Namespace) -> int:
    from orchestrator.cli import logs

    return logs.cmd_logs(args)


def _cmd_events(args: argparse.Namespace) -> int:
    from orchestrator.cli import logs

    return logs.cmd_events(args)
