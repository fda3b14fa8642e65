"""The control socket against a raw AF_UNIX client: bad requests get an error reply, the root carries on."""
import json
import socket

from orchestrator.testing import json_tree, wait_for
from tests.helpers import small_tree, socket_path, spec_pids

TREE = small_tree("ctl")
ONE_MB = 1 << 20


def connect(env) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(socket_path(env, "ctl")))
    except OSError:
        sock.close()
        raise
    return sock


def converse(env, payload: bytes):
    """Send `payload`, close our side, read until the root closes; (replies, connection reset?)."""
    with connect(env) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the root hung up on an oversized request; its reply may still be readable
        data, reset = b"", False
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()], reset


def assert_error_reply(replies, payload):
    assert len(replies) == 1, (payload[:80], replies)
    reply = replies[0]
    assert reply["ok"] is False, (payload[:80], reply)
    assert isinstance(reply["error"], str) and reply["error"], reply


def pids(env):
    return spec_pids(json_tree(env, "ctl"))


BAD_REQUESTS = [
    ("garbage", b"\x00\xff\xfe not json at all\n"),
    ("truncated", b'{"cmd": "tr\n'),
    ("list", b'["tree"]\n'),
    ("string", b'"tree"\n'),
    ("cmd not a string", b'{"cmd": 5}\n'),
    ("no cmd", b'{"command": "tree"}\n'),
    ("unknown cmd", b'{"cmd": "nope"}\n'),
    ("empty line", b"\n"),
]


def test_bad_requests_get_an_error_reply_and_the_root_carries_on(orch_tree, orch_env):
    tree = orch_tree(TREE)
    before = pids(orch_env)
    for label, payload in BAD_REQUESTS:
        replies, _ = converse(orch_env, payload)
        assert_error_reply(replies, payload)
        assert tree.pids() == before, f"after the {label} request"
    assert pids(orch_env) == before  # and the CLI still gets its answer
    assert tree.process.poll() is None


def test_unknown_command_is_named_with_the_known_ones(orch_tree, orch_env):
    orch_tree(TREE)
    [reply], _ = converse(orch_env, b'{"cmd": "nope"}\n')
    assert "nope" in reply["error"] and "tree" in reply["error"]


def test_oversized_request_is_refused_and_the_connection_closed(orch_tree, orch_env):
    tree = orch_tree(TREE)
    before = pids(orch_env)
    payload = b'{"cmd": "tree", "pad": "' + b"x" * ONE_MB + b'"}\n'  # valid JSON, only too long
    replies, _ = converse(orch_env, payload)  # returns only once the root closed the connection
    if replies:
        assert_error_reply(replies, payload)
    assert pids(orch_env) == before
    assert tree.process.poll() is None


def test_requests_on_one_connection_are_answered_in_order(orch_tree, orch_env):
    orch_tree(TREE)
    replies, _ = converse(orch_env, b'{"cmd": "ping"}\n{"cmd": "nope"}\n{"cmd": "tree"}\n')
    assert [reply["ok"] for reply in replies] == [True, False, True]
    assert replies[0]["pid"] == replies[2]["nodes"][0]["pid"]


def test_silent_and_vanishing_clients_do_not_block_the_root(orch_tree, orch_env):
    tree = orch_tree(TREE)
    before = pids(orch_env)
    # More than the listen backlog; a full backlog refuses at once (EAGAIN), so retry until accepted.
    idle = [wait_for(lambda: connect(orch_env), message="the root to accept another client")
            for _ in range(100)]
    try:
        half = connect(orch_env)
        half.sendall(b'{"cmd": "tr')  # half a request, then gone
        half.close()
        assert pids(orch_env) == before
    finally:
        for sock in idle:
            sock.close()
    assert pids(orch_env) == before
    assert tree.process.poll() is None
