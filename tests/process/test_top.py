"""`orch top` driven as a person would: in a private tmux server against a real tree, reading the
screen (`capture-pane`), pressing keys (`send-keys`), and checking the terminal it leaves behind."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from typing import Dict, Iterator, List, Optional

import psutil
import pytest

from orchestrator.testing import run_orch, wait_for
from tests.helpers import running_again, tree_text

PROMPT = "PROMPT$ "
WIDTH, HEIGHT = 120, 40


class Pane:
    """One tmux pane running an interactive bash, on a tmux server of its own (`-L`)."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.socket = f"orch-top-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.env = {key: value for key, value in env.items() if key != "TMUX"}
        exported = [arg for key in ("ORCH_RUN_DIR", "ORCH_LOG_DIR", "ORCH_DISABLE_PLUGIN_AUTOLOAD")
                    for arg in ("-e", f"{key}={self.env[key]}")]
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), *exported,
                  "bash --norc --noprofile -i")
        try:
            self.type(f"PS1='{PROMPT}'")
            self.wait_for(lambda screen: screen.rstrip().endswith(PROMPT.rstrip()), "the shell's prompt")
        except BaseException:
            self.kill()  # the fixture never gets it to clean up
            raise

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def type(self, line: str) -> None:
        """Type a command line and press Enter."""
        self.tmux("send-keys", "-l", line)
        self.tmux("send-keys", "Enter")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, holds, what: str, timeout: float = 15.0) -> str:
        """The screen once `holds(screen)` is true; on timeout the failure shows the last screen."""
        seen: List[str] = [""]

        def check() -> Optional[str]:
            seen[0] = self.screen()
            return seen[0] if holds(seen[0]) else None
        try:
            return wait_for(check, timeout, what, interval=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}; the screen:\n{seen[0]}") from None

    def wait_text(self, text: str, timeout: float = 15.0) -> str:
        return self.wait_for(lambda screen: text in screen, repr(text), timeout)

    def display(self, what: str) -> str:
        return self.tmux("display", "-p", what).strip()

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True, timeout=10)


@pytest.fixture
def pane(orch_env) -> Iterator[Pane]:
    made = Pane(orch_env)
    try:
        yield made
    finally:
        made.kill()


def top_command(name: str) -> str:
    """`orch top NAME`, then its exit code and the terminal mode it left, for the test to read."""
    return (f"stty -g > mode.before; {sys.executable} -m orchestrator top {name}; echo \"top exited $?\"; "
            "stty -g | cmp -s - mode.before && printf 'terminal mode %s\\n' restored")


def back_at_the_prompt(pane: Pane) -> str:
    """The screen once `orch top` ended, its terminal mode was found restored and the prompt is back."""
    return pane.wait_for(lambda screen: "terminal mode restored" in screen
                         and screen.rstrip().endswith(PROMPT.rstrip()), "orch top ended and the prompt back")


def row_of(screen: str, name: str) -> List[str]:
    """The cells of the tree line whose node name is `name` (tree-drawing prefix dropped)."""
    for line in screen.splitlines():
        cells = re.sub(r"^[\s│├└─▸▾]+", "", line).split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no line for {name!r} on the screen:\n{screen}")


SAY = '''
    [[children]]
    name = "a"
    worker = "t.sleep"
    [[children]]
    name = "sup"
      [[children.children]]
      name = "talk"
      worker = "t.say"
      args = { text = "hello from talk\\n" }
      [[children.children]]
      name = "b"
      worker = "t.sleep"
'''


def test_no_terminal_is_refused(orch_env):
    result = run_orch("top", env=orch_env)
    assert result.returncode == 2
    assert result.stderr.strip() == "orch: orch top needs a terminal; use orch tree"


def test_the_tree_its_log_lines_and_a_restart_after_a_sigkill(orch_tree, pane, tmp_path):
    tree = orch_tree(tree_text("tp", SAY))
    pane.type(f"cd {tmp_path}; " + top_command("tp"))
    screen = pane.wait_text("hello from talk")
    assert screen.splitlines()[0].startswith("orch top  tree tp")
    a = tree.node("a")
    assert row_of(screen, "a")[:4] == ["a", "running", "yes", str(a["pid"])]
    assert row_of(screen, "sup")[:2] == ["sup", "running"]
    assert "5 processes  5/5 nodes running  0 restarts in the last minute" in screen

    os.kill(a["pid"], signal.SIGKILL)
    new = tree.wait_for(lambda: running_again(tree.node("a"), a["pid"]), message="a restarted")
    screen = pane.wait_for(lambda screen: row_of(screen, "a")[3:5] == [str(new["pid"]), "1"],
                           f"a shown with its new pid {new['pid']} and 1 restart")
    assert "1 restart in the last minute" in screen
    pane.wait_for(lambda screen: re.search(r"\ba\s+exited\s+pid=%d signal=SIGKILL" % a["pid"], screen),
                  "the exit in the latest events")

    pane.keys("q")
    screen = back_at_the_prompt(pane)
    assert "top exited 0" in screen
    assert pane.display("#{alternate_on}") == "0"


def test_restart_asks_first_and_stop_holds_the_node(orch_tree, pane, tmp_path):
    tree = orch_tree(tree_text("tq", SAY))
    pid = tree.node("a")["pid"]
    pane.type(f"cd {tmp_path}; " + top_command("tq"))
    pane.wait_text("nodes running")
    pane.keys("j", "r")  # the line below the root is `a`
    pane.wait_text("Restart a? [y/n]")
    pane.keys("n")
    pane.wait_text("restart a: cancelled")
    assert tree.node("a")["pid"] == pid

    pane.keys("r")
    pane.wait_text("Restart a? [y/n]")
    pane.keys("y")
    pane.wait_text("restart a: restarting")
    new = tree.wait_for(lambda: running_again(tree.node("a"), pid), message="a restarted")
    pane.wait_for(lambda screen: row_of(screen, "a")[3] == str(new["pid"]), "a's new pid")

    pane.keys("s")
    pane.wait_text("Stop a and keep it stopped (held)? [y/n]")
    pane.keys("y")
    pane.wait_for(lambda screen: row_of(screen, "a")[1] == "held", "a held")
    assert tree.node("a")["held"]
    pane.keys("s")  # a held node starts at once
    pane.wait_for(lambda screen: row_of(screen, "a")[1] == "running", "a running again")

    pane.keys("C-c")  # quits as q does
    screen = back_at_the_prompt(pane)
    assert "top exited 0" in screen


def test_the_log_screen_follows_and_goes_back(orch_tree, pane, tmp_path):
    orch_tree(tree_text("tl", SAY))
    pane.type(f"cd {tmp_path}; " + top_command("tl"))
    pane.wait_text("hello from talk")
    pane.keys("j", "j", "j", "l")  # demo, a, sup, talk
    screen = pane.wait_text("log of sup/talk")
    assert re.search(r"^\d\d:\d\d:\d\d out hello from talk$", screen, re.M), screen
    pane.keys("Escape")
    pane.wait_text("nodes running")
    pane.keys("q")
    back_at_the_prompt(pane)


def test_it_adapts_to_a_resize(orch_tree, pane, tmp_path):
    orch_tree(tree_text("tr", SAY))
    pane.type(f"cd {tmp_path}; " + top_command("tr"))
    pane.wait_text("STATUS / LAST LOG LINE")
    pane.tmux("resize-window", "-x", "64", "-y", "20")

    def narrow(screen: str) -> bool:
        # The whole screen, not its first change: a capture can fall between two redraws.
        lines = screen.splitlines()
        return (len(lines) == 20 and "RDY" not in lines[1] and all(len(line) <= 64 for line in lines)
                # the footer moved up with the bottom
                and lines[-5].startswith("5 processes  5/5 nodes running")
                and lines[-1].startswith("↑↓/jk move"))

    pane.wait_for(narrow, "the narrow layout: 20 lines of at most 64 columns, the footer at the bottom")
    pane.keys("q")
    back_at_the_prompt(pane)


def test_it_ends_when_the_tree_stops(orch_tree, pane, tmp_path):
    tree = orch_tree(tree_text("ts", SAY))
    pane.type(f"cd {tmp_path}; " + top_command("ts"))
    pane.wait_text("nodes running")
    assert tree.stop() == 0
    screen = back_at_the_prompt(pane)
    assert "orch: tree 'ts' stopped; orch top ends" in screen and "top exited 0" in screen
    assert pane.display("#{alternate_on}") == "0"


def big_tree(name: str, groups: int = 10, replicas: int = 100) -> str:
    body = "".join(f'''
        [[children]]
        name = "g{group}"
          [[children.children]]
          name = "w"
          worker = "t.sleep"
          replicas = {replicas}
    ''' for group in range(groups))
    return tree_text(name, body)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_thousand_node_tree_scrolls(orch_tree, pane, tmp_path):
    tree = orch_tree(big_tree("tbig"), wait=False)
    tree.wait_running(timeout=150)
    pane.type(f"cd {tmp_path}; " + top_command("tbig"))
    screen = pane.wait_text("1011/1011 nodes running", timeout=30)
    assert screen.count("w#0..#99 (100)") == 10  # every group collapsed with its count
    pane.keys("j", "j", "Enter")  # tbig, g0, its group: expand it
    screen = pane.wait_text("w#26")  # 30 lines of tree on a 40-line screen
    assert row_of(screen, "w#0")[1] == "running" and "w#27" not in screen
    pane.keys("NPage", "NPage", "NPage")  # the cursor 90 lines down, on w#89, at the window's bottom
    screen = pane.wait_text("w#89")
    tree_lines = screen.splitlines()[2:32]
    assert "w#60" in tree_lines[0] and "w#89" in tree_lines[-1] and "1011 processes" in screen
    pane.keys("End")
    screen = pane.wait_for(lambda screen: re.search(r"└─ g9\s", screen) is not None, "the last supervisor")
    assert "w#99" in screen and "1011/1011 nodes running" in screen
    pane.keys("Home")
    screen = pane.wait_for(lambda screen: screen.splitlines()[2].startswith("tbig "), "back at the top")
    pids = [proc.pid for proc in psutil.Process(tree.root_pid).children()]
    assert len(pids) == 10
    pane.keys("q")
    back_at_the_prompt(pane)
