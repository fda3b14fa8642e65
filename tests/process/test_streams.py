"""orch's own stdout and stderr: a stream nobody reads never freezes the tree, a closed or
broken one never kills it, and a CLI command whose reader left ends quietly with exit 1."""
import os
import re
import select
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import pytest

from orchestrator.root import control
from orchestrator.root import livetree
from orchestrator.engine import streams
from orchestrator.testing import descendants, run_orch, wait_for
from tests.helpers import ORCH_ARGV, PLUGIN, PLUGINS

OUT = PLUGINS / "outworkers.py"
# Two chatty workers, one relayed by the root and one by a supervisor below it,
# and a sleeper beside each to SIGKILL.
CHATTY = f'''
    name = "streams"
    plugins = ["{OUT}", "{PLUGIN}"]
    [[children]]
    name = "talk"
    worker = "out.chatty"
    args = {{ burst = 200 }}
    [[children]]
    name = "sup"
      [[children.children]]
      name = "talk"
      worker = "out.chatty"
      args = {{ burst = 200 }}
      [[children.children]]
      name = "w"
      worker = "t.sleep"
    [[children]]
    name = "w"
    worker = "t.sleep"
'''
# Quiet on stdout: one line from `hello`; `w` is the one to SIGKILL.
QUIET = f'''
    name = "streams"
    plugins = ["{OUT}", "{PLUGIN}"]
    [[children]]
    name = "hello"
    worker = "out.both"
    args = {{ out = "hello out", err = "hello err" }}
    [[children]]
    name = "sup"
      [[children.children]]
      name = "w"
      worker = "t.sleep"
    [[children]]
    name = "w"
    worker = "t.sleep"
'''


def dropped_line(stream: str) -> "re.Pattern[bytes]":
    return re.compile(rb"orch: [1-9]\d* lines? of output dropped: " + stream.encode() +
                      rb" was not read fast enough\r?\n")


class Tree:
    """An `orch up` with the stdio a test chose; every pid it shows is killed by pid at the end."""

    def __init__(self, file: Path, env: Dict[str, str], wrap: List[str], popen: dict) -> None:
        self.env = env
        self.name = "streams"
        self.seen: Dict[int, Optional[float]] = {}
        self.others: List[subprocess.Popen] = []  # readers the test started
        self.process = subprocess.Popen(wrap + ORCH_ARGV + ["up", str(file)], env=env, **popen)
        self._remember(self.process.pid)

    def _remember(self, pid: int) -> None:
        try:
            self.seen[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            pass

    def ask(self, command: str) -> dict:
        reply = control.request(self.name, {"cmd": command}, timeout=5.0)
        assert reply.get("ok"), reply
        return reply

    def nodes(self) -> List[dict]:
        nodes = self.ask("tree")["nodes"]
        for node in nodes:
            if node["pid"] and node["pid"] not in self.seen:
                self._remember(node["pid"])
        return nodes

    def pid_of(self, path: str) -> Optional[int]:
        return next(node["pid"] for node in self.nodes() if node["path"] == path)

    def wait_running(self) -> None:
        def running():
            nodes = [node for node in self.nodes() if node["kind"] != "helper"]
            return all(node["state"] == "running" and node["pid"] for node in nodes)
        wait_for(running, timeout=15, message="every node running")

    def kill_everything(self) -> None:
        targets: Dict[int, Optional[float]] = {proc.pid: None for proc in descendants(self.process.pid)}
        targets.update(self.seen)
        killed = [pid for pid, created in targets.items()
                  if livetree.signal_if_same(pid, created, signal.SIGKILL)]
        for other in self.others:
            if other.poll() is None:
                other.kill()
            other.wait(5)
        livetree.wait_gone(killed, timeout=5)
        if self.process.poll() is None:
            self.process.wait(5)


@pytest.fixture
def start(tmp_path, orch_env, monkeypatch):
    """Factory: ``start(text, wrap=[], **popen)``; whatever it started is killed at teardown."""
    monkeypatch.setenv(control.ENV_RUN_DIR, orch_env[control.ENV_RUN_DIR])
    started: List[Tree] = []

    def start_tree(text: str, wrap: List[str] = (), **popen) -> Tree:
        file = tmp_path / "tree.toml"
        file.write_text(textwrap.dedent(text))
        popen.setdefault("stdin", subprocess.DEVNULL)
        tree = Tree(file, orch_env, list(wrap), popen)
        started.append(tree)
        return tree

    yield start_tree
    for tree in started:
        tree.kill_everything()


@pytest.fixture
def fds():
    """Fds the test opens, closed at teardown (closing twice is fine)."""
    opened: List[int] = []
    yield opened
    for fd in opened:
        try:
            os.close(fd)
        except OSError:
            pass


def pipe(fds: List[int]):
    read_end, write_end = os.pipe()
    fds.extend((read_end, write_end))
    os.set_blocking(read_end, False)
    return read_end, write_end


def full(fd: int) -> bool:
    """No room left in the pipe or terminal behind `fd` (a writer would block)."""
    return not select.select([], [fd], [], 0)[1]


def read_available(fd: int, into: bytearray) -> bytes:
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return bytes(into)
        except OSError:  # EIO: a pty whose other side is gone
            return bytes(into)
        if not data:
            return bytes(into)
        into += data


def written(pid: int) -> int:
    """Bytes the process has written so far, to any fd."""
    return psutil.Process(pid).io_counters().write_chars


def reaped(pid: int, created: float) -> bool:
    """Gone for good: not even a zombie is left (a reused pid is another process)."""
    try:
        return psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


def assert_replaced_after_sigkill(tree: Tree, path: str) -> None:
    """SIGKILL the node; within 2 s another process runs it and the old one is reaped."""
    old = tree.pid_of(path)
    created = psutil.Process(old).create_time()
    os.kill(old, signal.SIGKILL)

    def replaced():
        new = tree.pid_of(path)
        return (new not in (None, old) and psutil.Process(new).status() != psutil.STATUS_ZOMBIE
                and reaped(old, created))
    wait_for(replaced, timeout=2.0, message=f"{path} replaced and the old process reaped")


def assert_tree_answers(tree: Tree) -> None:
    result = run_orch("tree", tree.name, env=tree.env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "talk" in result.stdout or "hello" in result.stdout, result.stdout


def assert_sigterm_stops_everything(tree: Tree) -> None:
    root = tree.ask("ping")
    os.kill(root["pid"], signal.SIGTERM)
    try:
        code = tree.process.wait(root["stop_budget"] + 2.0)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"orch up still runs {root['stop_budget'] + 2.0:g}s after SIGTERM") from None
    assert code == 0
    assert livetree.wait_gone(list(tree.seen), timeout=2.0) == []


def assert_own_description_still_blocks(fd: int) -> None:
    """orch made its writes non-blocking on a description of its own, not on the one it
    shares with whoever started it (a shell would break on a non-blocking terminal)."""
    assert os.get_blocking(fd)


# ----- a stream nobody reads --------------------------------------------------------


class Blocked:
    """One way of leaving orch's stdout or stderr unread, and of reading it later."""

    stream = "stdout"
    text = CHATTY

    def __init__(self, fds: List[int], tmp_path: Path) -> None:
        self.fds = fds
        self.tmp_path = tmp_path
        self.seen = bytearray()

    def popen(self) -> dict:
        raise NotImplementedError

    def writer(self) -> int:
        """Our own fd on the stream orch writes: to see whether it is full."""
        raise NotImplementedError

    def drain(self) -> bytes:
        """Read what is there now; everything read so far."""
        raise NotImplementedError

    def block(self, tree: Tree) -> None:
        """Stop reading until the stream is full."""
        wait_for(lambda: full(self.writer()), timeout=15, message=f"orch's {self.stream} to fill up")

    def started(self, tree: Tree) -> None:
        pass

    def overflow(self, tree: Tree) -> None:
        """Wait until the chatty workers wrote more than the stream and a sink hold
        since it filled up: some lines must have been dropped by now."""
        pids = [tree.pid_of("talk"), tree.pid_of("sup/talk")]
        before = {pid: written(pid) for pid in pids}
        wait_for(lambda: all(written(pid) - before[pid] > 2 * streams.LIMIT for pid in pids),
                 timeout=20, message="the chatty workers to write more than a sink holds")


class UnreadPipe(Blocked):
    def __init__(self, fds, tmp_path) -> None:
        super().__init__(fds, tmp_path)
        self.read_end, self.write_end = pipe(fds)

    def popen(self) -> dict:
        return {self.stream: self.write_end, "stderr" if self.stream == "stdout" else "stdout":
                subprocess.DEVNULL}

    def writer(self) -> int:
        return self.write_end

    def drain(self) -> bytes:
        return read_available(self.read_end, self.seen)


class StoppedReader(UnreadPipe):
    """stdout piped into a `cat` that is stopped (SIGSTOP), as `| less` left paused."""

    def __init__(self, fds, tmp_path) -> None:
        super().__init__(fds, tmp_path)
        self.file = tmp_path / "cat.out"
        os.set_blocking(self.read_end, True)  # cat's own reads wait for data
        self.cat = subprocess.Popen(["cat"], stdin=self.read_end, stdout=open(self.file, "wb"))
        self.cat.send_signal(signal.SIGSTOP)

    def started(self, tree: Tree) -> None:
        tree.others.append(self.cat)

    def drain(self) -> bytes:
        self.cat.send_signal(signal.SIGCONT)
        return self.file.read_bytes()

    def block(self, tree: Tree) -> None:
        self.cat.send_signal(signal.SIGSTOP)
        super().block(tree)


class UnreadTerminal(Blocked):
    """stdout a terminal whose output nobody reads, as one paused with Ctrl-S."""

    def __init__(self, fds, tmp_path) -> None:
        super().__init__(fds, tmp_path)
        self.master, self.slave = os.openpty()
        fds.extend((self.master, self.slave))
        os.set_blocking(self.master, False)

    def popen(self) -> dict:
        return {"stdout": self.slave, "stderr": subprocess.DEVNULL}

    def writer(self) -> int:
        return self.slave

    def drain(self) -> bytes:
        return read_available(self.master, self.seen)


class UnreadStderr(UnreadPipe):
    """stderr a pipe nobody reads; the root fills it with a reload of a file with
    thousands of problems (on SIGHUP), each a message of its own."""

    stream = "stderr"
    text = QUIET

    def block(self, tree: Tree) -> None:
        file = self.tmp_path / "tree.toml"
        good = file.read_text()
        keys = "\n".join(f"unknown_key_{i:05d}_{'x' * 60} = 1" for i in range(3000))
        file.write_text(good + "\n" + keys + "\n")
        os.kill(tree.ask("ping")["pid"], signal.SIGHUP)
        super().block(tree)
        file.write_text(good)

    def overflow(self, tree: Tree) -> None:
        """Nothing to wait for: the root logs all of the problems in one go, more
        than the stream and a sink hold, before it handles anything else."""


@pytest.mark.parametrize("way", [UnreadPipe, StoppedReader, UnreadTerminal, UnreadStderr],
                         ids=["stdout-pipe-unread", "stdout-reader-stopped", "stdout-terminal-unread",
                              "stderr-pipe-unread"])
def test_an_unread_stream_never_stops_supervision(start, fds, tmp_path, way):
    blocked = way(fds, tmp_path)
    tree = start(blocked.text, **blocked.popen())
    blocked.started(tree)
    tree.wait_running()
    assert_own_description_still_blocks(blocked.writer())
    blocked.block(tree)
    blocked.overflow(tree)

    assert_replaced_after_sigkill(tree, "w")
    assert_replaced_after_sigkill(tree, "sup/w")
    assert_tree_answers(tree)

    # Read it now: the backlog comes out, then the count of what did not fit.
    pattern = dropped_line(blocked.stream)
    wait_for(lambda: pattern.search(blocked.drain()), timeout=20,
             message=f"the dropped-lines line on {blocked.stream}")

    blocked.block(tree)
    assert_sigterm_stops_everything(tree)


def test_dropped_lines_leave_whole_lines_in_order(start, fds, tmp_path):
    """What does get through is whole, prefixed lines; each worker's numbers only go up."""
    blocked = UnreadPipe(fds, tmp_path)
    tree = start(blocked.text, **blocked.popen())
    tree.wait_running()
    blocked.block(tree)
    blocked.overflow(tree)
    pattern = dropped_line("stdout")
    text = wait_for(lambda: pattern.search(blocked.drain()) and blocked.drain(), timeout=20,
                    message="the dropped-lines line")
    lines = text.decode().splitlines()[:-1]  # the last may be cut by the read
    last: Dict[str, int] = {}
    for line in lines:
        if line.startswith("orch: "):
            continue
        match = re.fullmatch(r"(talk|sup/talk) \| line (\d+) x{100}", line)
        assert match, line
        path, number = match.group(1), int(match.group(2))
        assert number > last.get(path, -1), line
        last[path] = number
    assert set(last) == {"talk", "sup/talk"}


# ----- closed standard streams ------------------------------------------------------


CLOSE = {"stdin": "0<&-", "stdout": "1>&-", "stderr": "2>&-", "all": "0<&- 1>&- 2>&-"}


@pytest.mark.parametrize("closed", list(CLOSE))
def test_up_runs_with_standard_streams_closed(start, tmp_path, closed):
    output = tmp_path / "output"
    wrap = ["sh", "-c", f'exec "$@" {CLOSE[closed]}', "sh"]
    with open(output, "wb") as file:
        tree = start(QUIET, wrap=wrap, stdout=file, stderr=file)
    tree.wait_running()
    root = tree.ask("ping")["pid"]
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        if closed in (name, "all"):
            # /dev/null holds the place, so no socket or pipe of ours became fd 0, 1 or 2
            assert os.readlink(f"/proc/{root}/fd/{fd}") == os.devnull

    # The worker printed on both streams at start; its death is a message of the root's.
    assert_replaced_after_sigkill(tree, "hello")
    assert_replaced_after_sigkill(tree, "w")
    if closed in ("stdin", "stderr"):
        wait_for(lambda: output.read_text().count("hello | hello out") == 2, message="the worker's lines")
    if closed in ("stdin", "stdout"):
        wait_for(lambda: "orch: hello was killed by SIGKILL" in output.read_text(), message="the message")

    result = run_orch("down", tree.name, env=tree.env)
    assert result.returncode == 0, result.stderr
    assert tree.process.wait(10) == 0
    assert livetree.wait_gone(list(tree.seen), timeout=2.0) == []


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_up_carries_on_when_the_reader_of_a_stream_leaves(start, fds, stream):
    read_end, write_end = pipe(fds)
    other = "stderr" if stream == "stdout" else "stdout"
    tree = start(CHATTY, **{stream: write_end, other: subprocess.DEVNULL})
    os.close(write_end)
    tree.wait_running()
    seen = bytearray()
    first = rb"talk \| line 0 " if stream == "stdout" else rb"orch: tree 'streams' is up"
    wait_for(lambda: re.search(first, read_available(read_end, seen)), message=f"a line on {stream}")
    os.close(read_end)  # writes now fail with EPIPE

    assert_replaced_after_sigkill(tree, "w")
    assert_replaced_after_sigkill(tree, "sup/w")
    assert_tree_answers(tree)
    assert_sigterm_stops_everything(tree)


# ----- the CLI when its reader leaves -------------------------------------------------


@pytest.fixture
def quiet_tree(orch_tree):
    return orch_tree(QUIET)


def cli(args: List[str], env: Dict[str, str], stdout, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(ORCH_ARGV + args, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


COMMANDS = {
    "tree": lambda tree: ["tree"],
    "tree-json": lambda tree: ["tree", "--json"],
    "plugins": lambda tree: ["plugins", "--tree", str(tree.file)],
    "plugins-json": lambda tree: ["plugins", "--tree", str(tree.file), "--json"],
    "validate": lambda tree: ["validate", str(tree.file)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_whose_reader_has_left_exits_1_quietly(quiet_tree, orch_env, fds, command):
    read_end, write_end = pipe(fds)
    os.close(read_end)  # the reader is gone before we write a byte
    process = cli(COMMANDS[command](quiet_tree), orch_env, stdout=write_end)
    _, err = process.communicate(timeout=30)
    assert (process.returncode, err) == (1, b"")


def big_plugin(tmp_path: Path) -> Path:
    """A tree file whose plugin provides thousands of workers: `orch plugins` prints >64 KiB."""
    plugin = tmp_path / "many.py"
    plugin.write_text(textwrap.dedent('''
        from orchestrator import hookimpl

        def work():
            """A worker with a docstring long enough to make each listed line long."""

        @hookimpl
        def orch_workers():
            return {f"many.worker_{i:05d}": work for i in range(3000)}
    '''))
    file = tmp_path / "many.toml"
    file.write_text(textwrap.dedent(f'''
        name = "many"
        plugins = ["{plugin}"]
        [[children]]
        name = "w"
        worker = "many.worker_00000"
    '''))
    return file


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_whose_reader_leaves_after_one_byte_exits_1_quietly(tmp_path, orch_env, as_json):
    """`orch plugins --tree FILE | head -c 1`, with more output than the pipe holds."""
    args = ["plugins", "--tree", str(big_plugin(tmp_path))] + (["--json"] if as_json else [])
    process = cli(args, orch_env, stdout=subprocess.PIPE)
    assert process.stdout.read(1)
    process.stdout.close()
    err = process.stderr.read()
    assert (process.wait(30), err) == (1, b"")


@pytest.mark.parametrize("closed", ["stdout", "stderr", "all"])
def test_cli_runs_with_standard_streams_closed(tmp_path, orch_env, closed):
    file = tmp_path / "tree.toml"
    file.write_text(textwrap.dedent(QUIET))
    wrap = ["sh", "-c", f'exec "$@" {CLOSE[closed]}', "sh"]
    valid = subprocess.run(wrap + ORCH_ARGV + ["validate", str(file)], env=orch_env, capture_output=True)
    assert valid.returncode == 0, valid.stderr
    if closed == "stdout":
        assert valid.stderr == b""
    missing = subprocess.run(wrap + ORCH_ARGV + ["tree", "nothing-here"], env=orch_env, capture_output=True)
    assert missing.returncode == 1
    assert b"Traceback" not in missing.stderr
