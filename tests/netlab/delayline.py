#!/usr/bin/env python3
"""A delay/loss line for the netlab (this kernel has no sch_netem).

usage: delayline.py IF_A IF_B DELAY_MS LOSS_PERCENT [SEED]

Runs inside a namespace that holds the two interfaces and nothing else (no addresses): every
Ethernet frame that arrives on one is sent out of the other DELAY_MS later, or dropped with
probability LOSS_PERCENT/100 (each direction independently). ARP goes through it too, so the
namespace is an invisible, slow wire between two routers. Frames are re-sent in arrival order.
Stops on SIGTERM. Python's scheduler adds well under a millisecond at lab packet rates; the
netlab measures the resulting RTT and loss with ping and prints them next to what was set.
"""
import heapq
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    if_a, if_b = sys.argv[1], sys.argv[2]
    delay = float(sys.argv[3]) / 1000.0
    loss = float(sys.argv[4]) / 100.0
    rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
    socks = {}
    for name in (if_a, if_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setblocking(False)
        socks[name] = s
    other = {if_a: socks[if_b], if_b: socks[if_a]}
    by_fd = {socks[n].fileno(): n for n in socks}
    queue = []  # (due, seq, socket, frame)
    seq = 0
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while running:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
            except OSError:
                pass
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        try:
            ready, _, _ = select.select(list(socks.values()), [], [], timeout)
        except InterruptedError:
            continue
        for s in ready:
            name = by_fd[s.fileno()]
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own send on this interface
                if loss > 0 and rng.random() < loss:
                    continue
                seq += 1
                heapq.heappush(queue, (time.monotonic() + delay, seq, other[name], frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
