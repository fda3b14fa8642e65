"""`orch top [NAME]`: the argument parser and the entry point; the screen lives in top_app.py.

This module is imported on every `orch` command (`orch up` included), so it imports
nothing heavy: rich is imported only when `orch top` runs, through top_app.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator.errors import UsageError


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = commands.add_parser("top", help="a live full-screen view of a running tree (q quits)")
    top.add_argument("name", nargs="?", help="tree name (default: the only running tree)")
    top.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("orch top needs a terminal; use orch tree")
    from orchestrator.cli import remote
    from orchestrator.cli import top_app

    return top_app.run(remote.one_tree(args.name))
