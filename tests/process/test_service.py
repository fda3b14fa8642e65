"""orch as a systemd Type=notify service: a datagram socket stands in for systemd's NOTIFY_SOCKET."""
from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from orchestrator.testing import RunningTree, wait_for
from tests.helpers import PLUGIN, matches_spec, ok, tree_text

# A worker that writes what it inherited: its os.environ, and that of a program it execs.
ENV_PLUGIN = '''
import json, os, signal, subprocess
from orchestrator import hookimpl

def dump_env(out):
    execd = subprocess.run(["env", "-0"], capture_output=True).stdout.decode().split("\\0")
    report = {"python": dict(os.environ), "exec": dict(line.split("=", 1) for line in execd if "=" in line)}
    with open(out + ".tmp", "w") as handle:
        json.dump(report, handle)
    os.replace(out + ".tmp", out)
    while True:
        signal.pause()

@hookimpl
def orch_workers():
    return {"svc.dump_env": dump_env}
'''


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: every datagram orch sends, as a dict of its fields."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: List[Dict[str, str]] = []

    def poll(self, timeout: float = 0.05) -> List[Dict[str, str]]:
        """Read what has arrived (waiting at most `timeout` for the first datagram)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                return self.received
            self.received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
            self.sock.settimeout(0)

    def wait(self, key: str, value: str = "1", after: int = 0, timeout: float = 15.0) -> int:
        """Index of the first message from `after` on with `key`=`value`."""
        def found() -> Optional[List[int]]:  # a list, so that index 0 counts as found
            for index, message in enumerate(self.poll()[after:], after):
                if message.get(key) == value:
                    return [index]
            return None
        return wait_for(found, timeout, f"{key}={value} from orch (got {self.received})")[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path):
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


def _service_env(env: Dict[str, str], address: str, **extra: str) -> Dict[str, str]:
    """The environment systemd gives `orch up`."""
    return dict(env, NOTIFY_SOCKET=address, **extra)


def _tree(tmp_path: Path, name: str, extra: str = "", start_method: str = "fork") -> Path:
    plugin = tmp_path / "svc_plugin.py"
    plugin.write_text(ENV_PLUGIN)
    file = tmp_path / f"{name}.toml"
    file.write_text(tree_text(name, f'''
        start_method = "{start_method}"
        [[children]]
        name = "env"
        worker = "svc.dump_env"
        args = {{ out = "{tmp_path / 'env.json'}" }}
        [[children]]
        name = "sup"
          [[children.children]]
          name = "b"
          worker = "t.sleep"
    ''' + extra, plugins=(PLUGIN, plugin)))
    return file


def _start(tmp_path: Path, file: Path, env: Dict[str, str], name: str, started: list) -> RunningTree:
    tree = RunningTree(file, name, env, tmp_path / f"{name}.out")
    started.append(tree)
    return tree


@pytest.fixture
def trees():
    started: List[RunningTree] = []
    yield started
    for tree in started:
        tree.kill_everything()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_ready_reload_stopping(tmp_path, orch_env, systemd, trees, start_method):
    address = str(tmp_path / "notify.sock")
    file = _tree(tmp_path, "svc", start_method=start_method)
    tree = _start(tmp_path, file, _service_env(orch_env, address), "svc", trees)

    ready = systemd.wait("READY")
    # READY=1 only once the whole tree is up: every node runs under the right parent now.
    assert matches_spec(tree), tree.nodes()
    assert systemd.received[ready]["MAINPID"] == str(tree.pid)  # the guardian stays the main pid
    assert not any("WATCHDOG" in message for message in systemd.received)  # no WATCHDOG_USEC given

    # Workers never see orch's own NOTIFY_SOCKET, in Python or in a program they exec.
    report = json.loads(wait_for(lambda: (tmp_path / "env.json").exists() and (tmp_path / "env.json").read_text()))
    for seen in (report["python"], report["exec"]):
        assert seen.get("NOTIFY_SOCKET") != address, seen
        assert "WATCHDOG_USEC" not in seen and "WATCHDOG_PID" not in seen

    # A reload: RELOADING=1, then READY=1 once the new node runs.
    file.write_text(file.read_text() + '\n[[children]]\nname = "late"\nworker = "t.sleep"\n')
    ok(tree.orch("reload", str(file)))
    reloading = systemd.wait("RELOADING", after=ready + 1)
    assert "MONOTONIC_USEC" in systemd.received[reloading]
    systemd.wait("READY", after=reloading + 1)
    assert tree.node("late")["state"] == "running"

    # SIGHUP reloads from the file too, with the same notifications.
    tree.process.send_signal(signal.SIGHUP)
    hup = systemd.wait("RELOADING", after=reloading + 1)
    again = systemd.wait("READY", after=hup + 1)

    result = tree.orch("down", "svc")
    ok(result)
    systemd.wait("STOPPING", after=again + 1)
    assert tree.wait_exit() == 0
    assert "READY" not in systemd.poll()[-1]


def test_watchdog(tmp_path, orch_env, trees):
    # An abstract address (`@name`), as systemd may hand out.
    name = f"orch-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        file = _tree(tmp_path, "dog")
        env = _service_env(orch_env, "@" + name, WATCHDOG_USEC="400000")
        tree = _start(tmp_path, file, env, "dog", trees)
        fake.wait("READY")
        start = len([m for m in fake.received if "WATCHDOG" in m])
        time.sleep(1.2)
        pings = [m for m in fake.poll() if m.get("WATCHDOG") == "1"]
        # Every 0.2 s (half of WATCHDOG_USEC): about 6 in 1.2 s; allow a slow machine some slack.
        assert len(pings) - start >= 4, fake.received
        report = json.loads(wait_for(lambda: (tmp_path / "env.json").exists() and (tmp_path / "env.json").read_text()))
        for seen in (report["python"], report["exec"]):
            assert "WATCHDOG_USEC" not in seen and seen.get("NOTIFY_SOCKET") != "@" + name
        assert tree.stop() == 0
        fake.wait("STOPPING")
    finally:
        fake.close()


def test_watchdog_of_another_pid_is_not_ours(tmp_path, orch_env, systemd, trees):
    """WATCHDOG_PID naming another process: the watchdog is not orch's to feed."""
    file = _tree(tmp_path, "other")
    env = _service_env(orch_env, str(tmp_path / "notify.sock"), WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    tree = _start(tmp_path, file, env, "other", trees)
    systemd.wait("READY")
    time.sleep(0.5)
    assert not any("WATCHDOG" in message for message in systemd.poll())
    assert tree.stop() == 0


def test_a_notify_socket_nobody_listens_on_is_no_error(tmp_path, orch_env, systemd, trees):
    """Every datagram fails (no such socket): the tree runs and stops as usual."""
    file = _tree(tmp_path, "plain")
    tree = _start(tmp_path, file, dict(orch_env, NOTIFY_SOCKET=str(tmp_path / "nobody.sock")), "plain", trees)
    tree.wait_running()
    assert systemd.poll(0.2) == []
    assert tree.stop() == 0
