"""`orch tree` in color: which state gets which color, columns that stay aligned, and when color is off."""
import argparse
import io

import pytest

from orchestrator.cli import color
from orchestrator.cli import remote
from orchestrator.root import view

CSI = "\x1b["


def row(path, state, kind="worker", pid=100, **flags):
    parent = None if not path else path.rpartition("/")[0]
    return {"path": path, "name": path.rpartition("/")[2] or "t", "kind": kind, "parent": parent,
            "pid": pid, "ppid": 1, "state": state, "restarts": 2, "uptime": 75.0, "rss": 5 << 20,
            "cpu": 1.5, "daemon": flags.get("daemon", False), "held": flags.get("held", False),
            "drift": flags.get("drift", False), "status": flags.get("status")}


# One row per state the view can show, under a root and a supervisor, with every flag.
ROWS = [
    row("", "running", kind="supervisor"),
    row("up", "running", daemon=True),
    row("sup", "starting", kind="supervisor"),
    row("sup/pending", "pending", pid=None),
    row("sup/restarting-one", "restarting", pid=None),
    row("sup/waiting", "backoff", pid=None),
    row("sup/dead", "failed", pid=None),
    row("sup/gone", "missing", pid=None, drift=True),
    row("quiet", "stopped", pid=None),
    row("parked", "stopped", pid=None, held=True),
    row("ending", "stopping", status="draining"),
    row("~4242", "sleeping", kind="helper", pid=4242),
]


def colored():
    return view.render_text("t", ROWS, color.tree_style)


def cell(state, sgr):
    return f"{CSI}{sgr}m{state}{color.RESET}"


def test_colors_leave_the_text_and_its_columns_as_they_are():
    plain = view.render_text("t", ROWS)
    assert CSI not in plain
    assert color.plain(colored()) == plain
    # Every column starts at the same offset on every line of the visible text.
    lines = color.plain(colored()).splitlines()
    header = lines[0]
    for title in ("PID", "PPID", "STATE", "RESTARTS", "UPTIME", "RSS", "CPU%", "KIND"):
        end = header.index(title) + len(title)
        right_aligned = title not in ("STATE", "KIND")
        for line in lines[1:]:
            if right_aligned:
                assert line[end - 1] != " " and line[end] == " ", (title, line)
    start = header.index("STATE")
    assert [line[start:start + 10].strip() for line in lines[1:]] == [r["state"] for r in ROWS]


@pytest.mark.parametrize("state, sgr", [
    ("running", "32"), ("starting", "33"), ("pending", "33"), ("restarting", "33"), ("stopping", "33"),
    ("backoff", "1;33"), ("failed", "1;31"), ("missing", "31"),
])
def test_each_state_has_its_color(state, sgr):
    assert cell(state, sgr) in colored()


def test_stopped_is_dim_held_is_blue_drift_magenta_helpers_dim():
    lines = colored().splitlines()
    quiet = next(line for line in lines if "quiet" in line)
    parked = next(line for line in lines if "parked" in line)
    gone = next(line for line in lines if "gone" in line)
    helper = next(line for line in lines if "~4242" in line)
    assert cell("stopped", "2") in quiet
    assert cell("stopped", "34") in parked and cell("held", "34") in parked
    assert cell("gone", "35") in gone and cell("DRIFT", "35") in gone
    assert cell("sleeping", "2") in helper
    assert lines[0].startswith(f"{CSI}1mNODE")


# ----- when to color --------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def tree_args(**keys):
    return argparse.Namespace(**dict({"name": "t", "json": False, "no_color": False}, **keys))


@pytest.fixture
def tree(monkeypatch):
    """Run `orch tree` against a canned reply, printing to a (fake) terminal; what it printed."""
    monkeypatch.setattr(remote, "ask", lambda name, command, timeout=10.0: {
        "ok": True, "tree": "t", "file": "/t.toml", "nodes": ROWS})
    monkeypatch.delenv("NO_COLOR", raising=False)

    def run(**keys):
        out = FakeTty()
        # Set here, not in the fixture: pytest's capture sets sys.stdout anew for the test's call.
        monkeypatch.setattr("sys.stdout", out)
        assert remote.cmd_tree(tree_args(**keys)) == 0
        return out.getvalue()
    return run


def test_tree_on_a_terminal_is_colored(tree):
    output = tree()
    assert cell("running", "32") in output
    assert color.plain(output) == "tree t (/t.toml)\n" + view.render_text("t", ROWS) + "\n"


def test_no_color_flag_gives_plain_text(tree):
    assert CSI not in tree(no_color=True)


def test_no_color_variable_gives_plain_text(tree, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert CSI not in tree()


def test_json_is_never_colored(tree):
    output = tree(json=True)
    assert CSI not in output and '"state": "running"' in output


def test_not_a_terminal_gives_plain_text(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    assert not color.use_color(False, out)
    assert color.use_color(False, FakeTty()) and not color.use_color(True, FakeTty())


def test_paint_leaves_empty_text_and_unknown_roles_alone():
    assert color.paint("", "32") == ""
    assert color.tree_style("x", "no such role") == "x"
