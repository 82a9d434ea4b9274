#!/usr/bin/env python3
"""An Ethernet hub with latency and loss, for NAT tests in network namespaces.

    delay-hub.py [--loss PERCENT] DELAY_MS IFACE IFACE [IFACE...]

Run inside a namespace whose interfaces IFACE... (veth ends, no addresses) lead to the hosts
of a test network: every frame that arrives on one is sent out of all the others DELAY_MS
later, each copy lost with probability PERCENT / 100 (default 0; a fixed seed, so a run is
repeatable). It stands in for the internet between NATs where the kernel has no `netem`
qdisc: with no latency at all, two NATs punching a hole at once each see the other's packet
before their own has left, which no real path does.
"""

import heapq
import random
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main() -> None:
    args = sys.argv[1:]
    loss = 0.0
    if args[:1] == ["--loss"]:
        if len(args) < 2:
            sys.exit(__doc__)
        loss = float(args[1]) / 100.0
        args = args[2:]
    if len(args) < 3:
        sys.exit(__doc__)
    delay = float(args[0]) / 1000.0
    rng = random.Random(7)
    socks = []
    for name in args[1:]:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setblocking(False)
        socks.append(s)
    queue = []  # (due, sequence, out socket, frame)
    seq = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        ready, _, _ = select.select(socks, [], [], timeout)
        now = time.monotonic()
        for s in ready:
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own transmission, seen on the way out
                for out in socks:
                    if out is not s and (loss == 0.0 or rng.random() >= loss):
                        heapq.heappush(queue, (now + delay, seq, out, frame))
                        seq += 1
        while queue and queue[0][0] <= time.monotonic():
            _, _, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
            except OSError:
                pass


if __name__ == "__main__":
    main()
