"""`python notify_send.py READY=1 ...`: send one sd_notify datagram, then wait on a barrier.

What `systemd-notify` does: the BARRIER=1 datagram carries a pipe's write end, and
the receiver closes it once it has handled what came before, so this process is
still alive (its process group known) while the receiver looks at the first one.
"""
import os
import select
import socket
import sys

address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.sendto("\n".join(sys.argv[1:]).encode(), address)
    read_end, write_end = os.pipe()
    sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(
        __import__("array").array("i", [write_end]))))], 0, address)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 5.0)  # EOF once the receiver closed its copy
    sys.exit(0 if ready else 1)
