"""CLI commands that talk to a running tree over its control socket: tree, down, diff, reload, restart/stop/start."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, List, Optional

from orchestrator.root import control
from orchestrator.root import livetree
from orchestrator.root import view
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, InvalidInput, Problem, RuntimeFailure, UsageError

# States a node passes through on its way somewhere; a reload or command is done
# when no node is in one of them.
TRANSITIONAL = ("pending", "starting", "stopping", "restarting", "missing")
WAIT_SLACK = 10.0
# After a reload is applied, changed nodes must stay up this long to count as
# running: a worker that crashes at once is caught here, not reported as fine.
RELOAD_GRACE = 1.0


def add_parsers(commands) -> None:
    tree = commands.add_parser("tree", help="show the live tree: pids, ppids, states, restarts")
    tree.add_argument("name", nargs="?", help="tree name (default: every running tree)")
    tree.add_argument("--json", action="store_true", help="machine-readable list of nodes")
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


def cmd_tree(args) -> int:
    names = [args.name] if args.name else control.running_trees()
    if not names:
        raise RuntimeFailure("no tree is running")
    replies = [ask(name, {"cmd": "tree"}) for name in names]
    if args.json:
        nodes = [dict(node, tree=reply["tree"]) for reply in replies for node in reply["nodes"]]
        print(json.dumps(nodes, indent=2))
        return EXIT_OK
    blocks = [f"tree {reply['tree']} ({reply['file']})\n" + view.render_text(reply["tree"], reply["nodes"])
              for reply in replies]
    print("\n\n".join(blocks))
    return EXIT_OK


def cmd_down(args) -> int:
    name = one_tree(args.name)
    reply = ask(name, {"cmd": "down", "kill": args.kill})
    if reply.get("already_stopping") and not args.kill:
        print(f"orch: tree {name!r} is already stopping; waiting for it (`orch down --kill` "
              "to SIGKILL what is left)", file=sys.stderr)
    budget = reply["stop_budget"] + 5.0
    alive = livetree.wait_gone(reply["pids"], timeout=budget)
    if alive:
        pids = ", ".join(str(pid) for pid in alive)
        raise RuntimeFailure(f"tree {name!r}: processes still alive after {budget:g}s: {pids}")
    print(f"orch: tree {name!r} stopped; {len(reply['pids'])} processes gone", file=sys.stderr)
    return EXIT_OK


# ----- diff / reload ------------------------------------------------------------


def cmd_diff(args) -> int:
    reply = _plan(args, "diff")
    _print_plan(reply, args.json, applied=False)
    return EXIT_OK


def cmd_reload(args) -> int:
    reply = _plan(args, "reload")
    _print_plan(reply, args.json, applied=True)
    name = reply["tree"]
    _wait_applied(name, reply["generation"])
    changed = {change["path"] for change in reply["changes"] if change["op"] in ("add", "restart")}
    failing = _verdict(name, changed)
    if failing:
        listing = ", ".join(f"{node['path']} ({node['state']})" for node in failing)
        raise RuntimeFailure(f"reload applied, but not everything runs: {listing}; "
                             f"see `orch tree {reply['tree']}`, fix the file and reload again")
    return EXIT_OK


def _wait_applied(name: str, generation: int) -> None:
    """Wait until every supervisor has acknowledged the new spec (stops and starts done)."""
    deadline = time.monotonic() + _budget(name)
    while ask(name, {"cmd": "ping"}).get("applied", 0) < generation:
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"tree {name!r} did not finish applying the reload in time; "
                                 f"see `orch tree {name}`")
        time.sleep(0.01)


def _not_running(nodes: List[dict]) -> List[dict]:
    return [node for node in nodes
            if node["kind"] in ("supervisor", "worker") and node["state"] not in ("running", "stopped")]


def _verdict(name: str, changed: set) -> List[dict]:
    """What does not run after a reload, judged only on a settled tree.

    Changed nodes that fail within the grace period count too (a worker that crashes
    at start-up is caught here). Failures, not pid changes, are the test: a restart
    someone asked for meanwhile, or a sibling's restart round, is not a crash.
    """
    settled = _wait_settled(name, lambda nodes: True)
    failures = {node["path"]: node.get("failures", 0) for node in settled if node["path"] in changed}
    deadline = time.monotonic() + RELOAD_GRACE
    while True:
        crashed = [node for node in settled
                   if node["path"] in failures and node.get("failures", 0) > failures[node["path"]]]
        if crashed or time.monotonic() >= deadline:
            return crashed or _not_running(settled)
        time.sleep(0.05)
        settled = _wait_settled(name, lambda nodes: True)


def _plan(args, command: str) -> dict:
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
    reply = control.request(name, {"cmd": command, "file": os.path.abspath(args.file),
                                   "shown": args.file, "text": text})
    if reply.get("problems"):
        raise InvalidInput(Problem(**problem) for problem in reply["problems"])
    if not reply.get("ok"):
        raise RuntimeFailure(f"tree {tree.name!r}: {reply.get('error', 'request failed')}")
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


def cmd_node(args) -> int:
    name = one_tree(args.name)
    # The root checks the path and whether the command can apply (exit 2 at once if not)
    # and says which pid the node had, so a restart is done once that pid is replaced.
    before = ask(name, {"cmd": args.command, "path": args.path}).get("pid")
    wanted = {
        "stop": lambda node: node["state"] == "stopped" and node["pid"] is None,
        "start": lambda node: node["state"] == "running",
        "restart": lambda node: node["state"] == "running" and node["pid"] != before,
    }[args.command]
    # A concurrent `orch stop` of this node or an ancestor ends the wait too: it will not run.
    held_meanwhile = (lambda nodes: False) if args.command == "stop" else \
        (lambda nodes: _holder(nodes, args.path) is not None)
    nodes = _wait_settled(name, lambda nodes: wanted(_node(nodes, args.path)) or held_meanwhile(nodes))
    node = _node(nodes, args.path)
    holder = None if wanted(node) or args.command == "stop" else _holder(nodes, args.path)
    print(f"orch: {name}/{args.path}: {node['state']}" + (f" (pid {node['pid']})" if node["pid"] else "")
          + (f"; {holder} was stopped meanwhile (held)" if holder else ""), file=sys.stderr)
    return EXIT_OK if wanted(node) else EXIT_FAILURE


def _holder(nodes: List[dict], path: str) -> Optional[str]:
    """The path of `path` or its nearest ancestor that is held, if any."""
    held = {node["path"] for node in nodes if node.get("held")}
    while path:
        if path in held:
            return path
        path = path.rpartition("/")[0]
    return None


def _node(nodes: List[dict], path: str) -> dict:
    for node in nodes:
        if node["path"] == path:
            return node
    raise RuntimeFailure(f"node {path!r} is gone from the tree")


def _wait_settled(name: str, done: Callable[[List[dict]], bool], timeout: Optional[float] = None) -> List[dict]:
    """Poll the tree until no node is in transit and `done` holds (this is the CLI, not a loop)."""
    deadline = time.monotonic() + (timeout or _budget(name))
    while True:
        nodes = ask(name, {"cmd": "tree"})["nodes"]
        settled = not any(node["state"] in TRANSITIONAL for node in nodes if node["kind"] != "helper")
        if (settled and done(nodes)) or time.monotonic() > deadline:
            return nodes
        time.sleep(0.02)


def _budget(name: str) -> float:
    return ask(name, {"cmd": "ping"}).get("stop_budget", 30.0) + WAIT_SLACK


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


def ask(name: str, command: dict) -> dict:
    reply = control.request(name, command)
    if not reply.get("ok"):
        failure = UsageError if reply.get("usage") else RuntimeFailure
        raise failure(f"tree {name!r}: {reply.get('error', 'request failed')}")
    return reply
