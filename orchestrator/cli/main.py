"""`orch` command line: argument parsing and presenting results; the work lives elsewhere."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from orchestrator import __version__
from orchestrator.cli import log_commands
from orchestrator.cli import remote
from orchestrator.engine import streams
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, InvalidInput, RuntimeFailure, UsageError

if TYPE_CHECKING:
    from orchestrator.spec.model import TreeSpec


def main(argv: Optional[List[str]] = None) -> int:
    streams.fill_closed_std_fds()  # first: nothing we open later may become fd 0, 1 or 2
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (`orch completion`)
        from orchestrator.cli import completion

        completion.autocomplete(parser)  # prints them and exits
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a reader that left is handled, not at interpreter exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except InvalidInput as error:
        for problem in error.problems:
            _error(str(problem))
        count = len(error.problems)
        outcome = "; nothing was started" if args.command == "up" else ""
        _error(f"orch: {count} problem{'s' if count != 1 else ''} found{outcome}")
        return EXIT_USAGE
    except UsageError as error:
        _error(f"orch: {error}")
        return EXIT_USAGE
    except RuntimeFailure as error:
        _error(f"orch: {error}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("orch: interrupted")
        return EXIT_FAILURE


def _error(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        # A broken pipe, or (under `up`, whose fds are non-blocking) a full one:
        # nobody can be told, and the interpreter's final flush must not fail.
        _discard_output()


def _reader_gone() -> int:
    """A pipe we print to lost its reader (`orch tree | head -1`): end quietly, exit 1.

    SIGPIPE stays ignored (Python's default): a dead root's control socket must
    raise an error, not kill the command.
    """
    _discard_output()
    return EXIT_FAILURE


def _discard_output() -> None:
    """Point fds 1 and 2 at /dev/null, so what is still buffered in sys.stdout and
    sys.stderr is flushed there at exit instead of failing again (the recipe in
    Python's `signal` docs)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size reads it: a positive $COLUMNS, else
    the width of stdout's terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout (AttributeError on None), or no terminal
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own, given the width: without one it imports shutil (and zlib, bz2 and
    lzma with it) on each add_argument, ~2 ms of every command, `orch tree` among them."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """Every parser of the CLI, subcommands' too (add_subparsers makes its own type)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="orch", description="Run a tree of supervised Python "
                                     "processes described by a TOML file.")
    parser.add_argument("--version", action="version", version=f"orch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start a tree (foreground unless --detach)")
    up.add_argument("file", help="tree file, e.g. trees/demo.toml")
    up.add_argument("--detach", "-d", action="store_true",
                    help="run in the background; return once every node runs, print the root pid")
    up.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    remote.add_parsers(commands)
    log_commands.add_parsers(commands)
    from orchestrator.cli import top  # `orch top`; rich is imported only when it runs
    top.add_parsers(commands)

    validate = commands.add_parser("validate", help="check a tree file and report every problem")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)

    plugins = commands.add_parser("plugins", help="list loaded plugins and the workers each provides")
    plugins.add_argument("--tree", metavar="FILE", help="also load the plugins this tree file names")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    completion = commands.add_parser("completion", help="print the shell completion script (bash or zsh)")
    completion.add_argument("shell", help="bash or zsh")
    completion.set_defaults(func=cmd_completion)
    return parser


# ----- up -------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from orchestrator.root import systemd
    from orchestrator.spec.validate import load_tree

    # First: systemd's NOTIFY_SOCKET/WATCHDOG_* are orch's own, never a plugin's or a worker's
    # (os.environ is what the tree inherits). `--detach` leaves them to the `orch up` it starts.
    notifier = None if args.detach else systemd.Notifier.take(os.environ, os.getpid())
    tree = load_tree(args.file)
    if args.detach:
        return _up_detached(args.file, tree)
    from orchestrator.root import guardian

    # Before any fork: the guardian, the root and every supervisor inherit fds 1 and 2.
    streams.make_std_fds_nonblocking()
    # This process stays above the root as its guardian; only the root returns here.
    guardian_pid = guardian.fork_root(tree.name)
    from orchestrator.root.root import Root, notify

    try:
        return Root(tree, ready_fd=args.ready_fd, guardian_pid=guardian_pid, notifier=notifier).run()
    except (RuntimeFailure, UsageError) as error:
        notify(args.ready_fd, f"failed {error}")
        raise


def _up_detached(file: str, tree: TreeSpec) -> int:
    """Start `orch up FILE` in a new session, its stdout and stderr on /dev/null (its nodes'
    output and its own messages go to the tree's log directory); return once it is up."""
    from orchestrator.root.control import RunDir, make_private_dir
    from orchestrator.spec.logconf import default_log_dir

    name = tree.name
    make_private_dir(RunDir(name).path)
    log_dir = tree.log.dir or default_log_dir(name)
    import subprocess  # only here: every other command would pay its import

    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", os.path.abspath(file), "--ready-fd", str(write_fd)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(write_fd,), start_new_session=True,
    )
    os.close(write_fd)
    from orchestrator.cli import progress

    with os.fdopen(read_fd, "rb") as ready, progress.showing(
            lambda: progress.nodes_started(name, (node.path for node in tree.nodes()), child.pid)):
        line = ready.readline().decode(errors="replace").strip()
    status, _, detail = line.partition(" ")
    if status == "ready":
        print(detail)
        print(f"orch: tree {name!r} is up (root pid {detail}); its logs are in {log_dir} "
              f"(`orch logs --tree {name}`, `orch events --tree {name}`)", file=sys.stderr)
        return EXIT_OK
    child.wait()
    reason = detail or (f"the root exited with code {child.returncode}; "
                        f"see {os.path.join(log_dir, 'orch.log')}")
    raise RuntimeFailure(f"tree {name!r} did not come up: {reason}")


# ----- validate / plugins -------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.spec.validate import load_tree

    tree = load_tree(args.file)
    nodes = list(tree.nodes())
    supervisors = sum(1 for node in nodes if node.is_supervisor)
    print(f"{args.file}: OK: tree {tree.name!r}, {supervisors} supervisors, "
          f"{len(nodes) - supervisors} workers, start method {tree.start_method.value}")
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from orchestrator.spec.catalog import PluginError, load_catalog

    plugin_refs: Tuple[str, ...] = ()
    if args.tree:
        from orchestrator.spec.validate import load_tree

        plugin_refs = load_tree(args.tree).plugins
    try:
        catalog = load_catalog(plugin_refs)
    except PluginError as error:
        raise RuntimeFailure("plugins failed to load:\n  " + "\n  ".join(
            message for _, message in error.problems)) from None
    if args.json:
        print(json.dumps([{"plugin": name, "workers": list(workers)} for name, workers in catalog.plugins],
                         indent=2))
        return EXIT_OK
    for name, workers in catalog.plugins:
        print(name)
        for worker in workers:
            print(f"  {worker:<24} {_summary(catalog.workers[worker].function)}")
    return EXIT_OK


def _summary(function: object) -> str:
    doc = (getattr(function, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


# ----- completion ----------------------------------------------------------------


def cmd_completion(args: argparse.Namespace) -> int:
    from orchestrator.cli import completion

    return completion.cmd_completion(args)
