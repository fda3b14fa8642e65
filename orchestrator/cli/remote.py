"""CLI commands that talk to a running tree over its control socket: tree, down, diff, reload, restart/stop/start."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from orchestrator.root import control
from orchestrator.root import livetree
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, InvalidInput, Problem, RuntimeFailure, UsageError

# reload and restart/stop/start make one request each, which the root answers once the
# tree has settled (orchestrator/root/settle.py), by its own deadline: the tree's stop
# budget plus slack. This side cannot know that budget, so it asks for at most
# WAIT_LIMIT and reads a little longer; the read's timeout only catches a root that
# stopped answering altogether.
WAIT_LIMIT = 3600.0
READ_SLACK = 10.0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tree = commands.add_parser("tree", help="show the live tree: pids, ppids, states, restarts")
    tree.add_argument("name", nargs="?", help="tree name (default: every running tree)")
    tree.add_argument("--json", action="store_true", help="machine-readable list of nodes")
    tree.add_argument("--no-color", action="store_true", help="never color the states")
    tree.set_defaults(func=cmd_tree)

    down = commands.add_parser("down", help="stop a tree; returns when every process is gone")
    down.add_argument("name", nargs="?", help="tree name (default: the only running tree)")
    down.add_argument("--kill", action="store_true",
                      help="SIGKILL every process now instead of the graceful stop (also during one)")
    down.set_defaults(func=cmd_down)

    for name, text in (("diff", "show what `orch reload FILE` would change"),
                       ("reload", "apply an edited tree file, touching only what changed")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("file", help="the edited tree file (names the running tree)")
        sub.add_argument("--json", action="store_true", help="the plan as JSON")
        sub.set_defaults(func=cmd_reload if name == "reload" else cmd_diff)

    for name, text in (("restart", "restart one node (a supervisor restarts its subtree)"),
                       ("stop", "stop one node and keep it stopped until `orch start`"),
                       ("start", "start a node stopped with `orch stop`")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("path", help="node path, e.g. pipeline/reader")
        sub.add_argument("--tree", "-t", dest="name", help="tree name (default: the only running tree)")
        sub.set_defaults(func=cmd_node)


# ----- tree / down ------------------------------------------------------------


def cmd_tree(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else control.running_trees()
    if not names:
        raise RuntimeFailure("no tree is running")
    replies = [ask(name, {"cmd": "tree"}) for name in names]
    if args.json:
        nodes = [dict(node, tree=reply["tree"]) for reply in replies for node in reply["nodes"]]
        # One node per line: greppable, and the C encoder (indent= would use the Python one).
        print("[\n" + ",\n".join("  " + json.dumps(node) for node in nodes) + ("\n]" if nodes else "]"))
        return EXIT_OK
    from orchestrator.cli import color
    from orchestrator.root import view  # the spec model and the table: not needed for --json

    style = color.tree_style if color.use_color(args.no_color) else None
    blocks = [f"tree {reply['tree']} ({reply['file']})\n" + view.render_text(reply["tree"], reply["nodes"], style)
              for reply in replies]
    print("\n\n".join(blocks))
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    name = one_tree(args.name)
    reply = ask(name, {"cmd": "down", "kill": args.kill})
    if reply.get("already_stopping") and not args.kill:
        print(f"orch: tree {name!r} is already stopping; waiting for it (`orch down --kill` "
              "to SIGKILL what is left)", file=sys.stderr)
    budget = reply["stop_budget"] + 5.0
    from orchestrator.cli import progress

    with progress.showing(lambda: progress.processes_gone(name, reply["pids"])):
        alive = livetree.wait_gone(reply["pids"], timeout=budget)
    if alive:
        pids = ", ".join(str(pid) for pid in alive)
        raise RuntimeFailure(f"tree {name!r}: processes still alive after {budget:g}s: {pids}")
    print(f"orch: tree {name!r} stopped; {len(reply['pids'])} processes gone", file=sys.stderr)
    return EXIT_OK


# ----- diff / reload ------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    reply = _plan(args, "diff")
    _print_plan(reply, args.json, applied=False)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """One request: the root applies the file and answers once the tree has settled, with
    the verdict (what does not run, changed nodes that crashed within its grace first)."""
    reply = _plan(args, "reload")
    _print_plan(reply, args.json, applied=True)
    name = reply["tree"]
    if not reply["applied"]:
        raise RuntimeFailure(f"tree {name!r} did not finish applying the reload in time; "
                             f"see `orch tree {name}`")
    if reply["failing"]:
        listing = ", ".join(f"{node['path']} ({node['state']})" for node in reply["failing"])
        raise RuntimeFailure(f"reload applied, but not everything runs: {listing}; "
                             f"see `orch tree {name}`, fix the file and reload again")
    return EXIT_OK


def _plan(args: argparse.Namespace, command: str) -> dict:
    """Ask the running tree for the plan of `args.file`; the root validates it in full.

    This side reads the file (it may be a pipe from `<(...)`, which only we can open)
    and checks only what it needs to find the tree's name; plugins are imported once,
    by the root, which reports every problem with the same messages as `orch validate`.
    """
    from orchestrator.spec.source import parse_source, read_text
    from orchestrator.spec.validate import validate_document

    text = read_text(args.file)
    try:
        name = validate_document(*parse_source(text, args.file), args.file).name
    except InvalidInput:
        from orchestrator.spec.validate import load_tree

        load_tree(args.file, text=text)  # every problem at once, as `orch validate` reports them
        raise
    request = {"cmd": command, "file": os.path.abspath(args.file), "shown": args.file, "text": text}
    if command == "reload":
        from orchestrator.cli import progress

        with progress.showing(lambda: progress.nodes_settling(name, f"reloading tree {name!r}"), args.json):
            reply = control.request(name, _waiting(request), timeout=WAIT_LIMIT + READ_SLACK)
    else:
        reply = control.request(name, request)
    if reply.get("problems"):
        raise InvalidInput(Problem(**problem) for problem in reply["problems"])
    if not reply.get("ok"):
        raise RuntimeFailure(f"tree {name!r}: {reply.get('error', 'request failed')}")
    return reply


def _print_plan(reply: dict, as_json: bool, applied: bool) -> None:
    if as_json:
        print(json.dumps({"changes": reply["changes"], "unchanged": reply["unchanged"]}, indent=2))
        return
    signs = {"add": "+", "remove": "-", "restart": "~", "update": "="}
    for change in reply["changes"]:
        keys = f" ({', '.join(change['keys'])})" if change["keys"] else ""
        live = " in place" if change["op"] == "update" else ""
        print(f"{signs[change['op']]} {change['op']:<8}{change['path'] or '(root)'}{keys}{live}")
    verb = "applied" if applied else "planned"
    print(f"{len(reply['changes'])} changes {verb}; {reply['unchanged']} nodes unchanged")


# ----- restart / stop / start ------------------------------------------------------


def cmd_node(args: argparse.Namespace) -> int:
    """One request: the root checks the path and whether the command can apply (exit 2 at
    once if not), acts, and answers once the tree has settled with the node where the
    command sent it, or held meanwhile by a concurrent `orch stop` (it will not run)."""
    name = one_tree(args.name)
    from orchestrator.cli import progress

    verb, count = _NODE_PROGRESS[args.command]
    with progress.showing(lambda: progress.nodes_settling(name, f"{verb} {name}/{args.path}", args.path, count)):
        reply = ask(name, _waiting({"cmd": args.command, "path": args.path}), timeout=WAIT_LIMIT + READ_SLACK)
    node, holder = reply["node"], reply["holder"]
    if node is None:
        raise RuntimeFailure(f"node {args.path!r} is gone from the tree")
    print(f"orch: {name}/{args.path}: {node['state']}" + (f" (pid {node['pid']})" if node["pid"] else "")
          + (f"; {holder} was stopped meanwhile (held)" if holder else ""), file=sys.stderr)
    return EXIT_OK if reply["wanted"] else EXIT_FAILURE


# The progress line of `orch restart|start|stop PATH`: its verb, and which nodes of the subtree are done.
_NODE_PROGRESS = {"restart": ("restarting", "again"), "start": ("starting", "running"), "stop": ("stopping", "stopped")}


def _waiting(request: dict) -> dict:
    """`request`, answered by the root only once the tree has settled (or WAIT_LIMIT passed)."""
    return dict(request, wait=True, timeout=WAIT_LIMIT)


# ----- helpers ------------------------------------------------------------------------


def one_tree(name: Optional[str]) -> str:
    if name:
        return name
    names = control.running_trees()
    if not names:
        raise RuntimeFailure("no tree is running")
    if len(names) > 1:
        raise UsageError(f"several trees are running ({', '.join(names)}); name one, e.g. "
                         f"`--tree {names[0]}` or `orch down {names[0]}`")
    return names[0]


def ask(name: str, command: dict, timeout: float = 10.0) -> dict:
    reply = control.request(name, command, timeout=timeout)
    if not reply.get("ok"):
        failure = UsageError if reply.get("usage") else RuntimeFailure
        raise failure(f"tree {name!r}: {reply.get('error', 'request failed')}")
    return reply
