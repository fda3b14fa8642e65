"""Shell completion for bash and zsh: `orch completion SHELL` prints the script; completing runs `orch` itself.

Why argcomplete rather than shtab: shtab writes a static script from the parser, and
anything dynamic has to be a shell function written once per shell, so the names of
the running trees and the node paths of a tree (answered by the root over its control
socket) would need a bash and a zsh reimplementation of the client. argcomplete's
script instead calls `orch` back with `_ARGCOMPLETE` set, and completers are Python
reusing `control.running_trees()` and a `{"cmd": "tree"}` request; it is a maintained,
typed library with one script for bash and zsh.

Import cost: `orch up` is the tree's root and forks every worker, so argcomplete is
imported only here, and this module only when the shell asks for completions
(`main()` sees `_ARGCOMPLETE`) or for `orch completion`. Attaching completers to the
parser happens then too, by walking it, so no parser definition imports anything.
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional

from orchestrator.errors import EXIT_OK, RuntimeFailure, UsageError
from orchestrator.root import control

SHELLS = ("bash", "zsh")
TIMEOUT = 2.0  # a root that does not answer this fast completes nothing, rather than hang the shell


def cmd_completion(args: argparse.Namespace) -> int:
    """`orch completion bash|zsh`: the script to `eval` (or to install as a completion file)."""
    if args.shell not in SHELLS:
        raise UsageError(f"no completion for shell {args.shell!r}; supported shells: {', '.join(SHELLS)}")
    import argcomplete

    print(argcomplete.shellcode(["orch"], shell=args.shell), end="")
    return EXIT_OK


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (argcomplete's protocol) and exit; return at once
    when `_ARGCOMPLETE` is not set."""
    import argcomplete

    attach(parser)
    argcomplete.autocomplete(parser, always_complete_options=False)  # options once a `-` is typed


def attach(parser: argparse.ArgumentParser) -> None:
    """Give every argument that names a tree, a node path or a tree file its completer, in
    `parser` and all its subcommands (so a command added later gets them by its names)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                attach(sub)
            continue
        completer = _completer_for(action)
        if completer is not None:
            setattr(action, "completer", completer)  # argcomplete reads this attribute


def _completer_for(action: argparse.Action) -> Optional[Callable[..., List[str]]]:
    if action.dest == "name" or action.metavar == "NAME":
        return tree_names
    if action.dest in ("path", "paths"):
        return node_paths
    if action.dest == "shell":
        return lambda **_: list(SHELLS)
    if action.dest == "file" or action.metavar == "FILE":
        import argcomplete

        return argcomplete.FilesCompleter(allowednames=("toml",))  # and directories
    return None


def tree_names(**_: object) -> List[str]:
    """The names of the running trees."""
    return control.running_trees()


def node_paths(parsed_args: Optional[argparse.Namespace] = None, **_: object) -> List[str]:
    """The node paths of the tree named so far on the line (`--tree`/`-t`), else of the only
    running tree; none when several run and none is named, or the tree does not answer."""
    try:
        name = getattr(parsed_args, "name", None) or _only_tree()
        if not name:
            return []
        nodes = control.request(name, {"cmd": "tree"}, timeout=TIMEOUT)["nodes"]
    except (RuntimeFailure, UsageError, KeyError, TypeError):
        return []
    return [node["path"] for node in nodes if node["path"] and node.get("kind") in ("supervisor", "worker")]


def _only_tree() -> Optional[str]:
    names = control.running_trees()
    return names[0] if len(names) == 1 else None
