"""Add real network delay to a network namespace's traffic, when the kernel has no ``netem``.

Run inside the namespace (``ip netns exec NS python netdelay.py QUEUE DELAY_FILE``) next to an iptables rule
``-A INPUT -i VETH -j NFQUEUE --queue-num QUEUE --queue-bypass``: the kernel hands each packet arriving in
the namespace to this process over nfnetlink_queue, which gives it back (NF_ACCEPT) after the delay in
milliseconds written in DELAY_FILE, so every round trip through the veth takes that much longer. The file
is re-read when it changes, so a test raises the delay at run time as it would with ``tc qdisc change ...
netem delay``. (Holding the packets the namespace *sends* instead would double the delay of a response:
a held segment still counts against its socket's TCP Small Queues budget and holds back the next one.)
Stdlib only: the netlink messages are packed by hand.
"""

from __future__ import annotations

import heapq
import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(msg: int, queue: int, attrs: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def _read_delay(path: str) -> float:
    try:
        with open(path) as f:
            return max(float(f.read().strip() or 0.0), 0.0) / 1000.0
    except (OSError, ValueError):
        return 0.0


def main(queue: int, delay_file: str) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    bind = _attr(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
    sock.send(_msg(NFQNL_MSG_CONFIG, queue, bind, 1, NLM_F_REQUEST | NLM_F_ACK))
    params = _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
    sock.send(_msg(NFQNL_MSG_CONFIG, queue, params, 2, NLM_F_REQUEST | NLM_F_ACK))
    for _ in range(2):  # both acks, or the error that says why binding failed
        data = sock.recv(65536)
        _, kind, _, _, _ = struct.unpack_from("=IHHII", data)
        if kind == NLMSG_ERROR and struct.unpack_from("=i", data, 16)[0] != 0:
            raise OSError(-struct.unpack_from("=i", data, 16)[0], "nfqueue config refused")
    print("ready", flush=True)

    delay, stamp = _read_delay(delay_file), 0.0
    pending: list[tuple[float, int]] = []  # (due, packet id)
    seq = 10
    while True:
        now = time.monotonic()
        try:
            mtime = os.stat(delay_file).st_mtime
        except OSError:
            mtime = stamp
        if mtime != stamp:
            stamp, delay = mtime, _read_delay(delay_file)
        while pending and pending[0][0] <= now:
            _, pid = heapq.heappop(pending)
            seq += 1
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, pid))
            sock.send(_msg(NFQNL_MSG_VERDICT, queue, verdict, seq))
        wait = min(pending[0][0] - now, 0.05) if pending else 0.05
        if not select.select([sock], [], [], max(wait, 0.0))[0]:
            continue
        data = sock.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20  # past nlmsghdr and nfgenmsg
                while a + 4 <= off + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == NFQA_PACKET_HDR:
                        pid = struct.unpack_from(">I", data, a + 4)[0]
                        heapq.heappush(pending, (time.monotonic() + delay, pid))
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
