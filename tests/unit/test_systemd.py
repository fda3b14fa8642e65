"""orchestrator/root/systemd.py: what `orch up` takes from its environment, and the datagrams."""
import socket
import uuid

from orchestrator.root.systemd import Notifier


def test_take_removes_the_variables_and_keeps_the_address():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42", "A": "1"}
    notifier = Notifier.take(env, pid=42)
    assert env == {"A": "1"}
    assert notifier is not None and notifier.address == "/run/systemd/notify"
    assert notifier.main_pid == 42 and notifier.watchdog_interval == 0.2


def test_watchdog_of_another_pid_or_without_socket():
    env = {"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "7"}
    notifier = Notifier.take(env, pid=42)
    assert env == {} and notifier is not None
    assert notifier.address == "\0abstract" and notifier.watchdog_interval is None
    env = {"WATCHDOG_USEC": "400000"}
    assert Notifier.take(env, pid=42) is None and env == {}
    assert Notifier.take({"NOTIFY_SOCKET": "vsock:2:1234"}, pid=42) is None
    assert Notifier.take({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "junk"}, pid=1).watchdog_interval is None


def test_datagrams_to_an_abstract_socket_and_errors_swallowed():
    name = f"orch-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier("@" + name, main_pid=99)
        assert notifier.ready()
        assert sock.recv(4096).decode().splitlines()[:2] == ["READY=1", "MAINPID=99"]
        assert notifier.stopping() and sock.recv(4096).startswith(b"STOPPING=1")
    assert Notifier("@" + name, main_pid=99).watchdog() is False  # nobody listens: no exception
