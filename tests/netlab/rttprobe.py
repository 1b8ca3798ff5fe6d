#!/usr/bin/env python3
"""Measure round-trip time and loss to a STUN server: N Binding requests, one every
INTERVAL ms, each with its own transaction id. Prints `rtt_p50_ms=.. rtt_p90_ms=.. loss_pct=..`.
The netlab uses it to check that a delay line gives the delay and loss it was set to.

usage: rttprobe.py SERVER_IP SERVER_PORT [COUNT] [INTERVAL_MS]
"""
import os
import select
import socket
import struct
import sys
import time

MAGIC = 0x2112A442


def main() -> int:
    sip, sport = sys.argv[1], int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    interval = (float(sys.argv[4]) if len(sys.argv) > 4 else 10.0) / 1000.0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = {}
    rtts = []
    start = time.monotonic()
    next_send = start
    n = 0
    deadline = None
    while True:
        now = time.monotonic()
        if n < count and now >= next_send:
            tid = os.urandom(12)
            # Padded with P2PM-PADDING (0xC050) to 128 bytes: the relay answers no request
            # with more bytes than it carried.
            pad = 128 - 20 - 4
            req = struct.pack("!HHI", 0x0001, 4 + pad, MAGIC) + tid + struct.pack("!HH", 0xC050, pad) + bytes(pad)
            s.sendto(req, (sip, sport))
            sent[tid] = now
            n += 1
            next_send += interval
            if n == count:
                deadline = now + 1.0
        if deadline is not None and now >= deadline:
            break
        wait = max(0.0, (next_send if n < count else deadline) - now)
        r, _, _ = select.select([s], [], [], wait)
        if r:
            try:
                data, _ = s.recvfrom(2048)
            except BlockingIOError:
                continue
            t = sent.pop(data[8:20], None) if len(data) >= 20 else None
            if t is not None:
                rtts.append((time.monotonic() - t) * 1000.0)
    if not rtts:
        print(f"rtt_p50_ms=nan rtt_p90_ms=nan loss_pct=100.0")
        return 1
    rtts.sort()
    p = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))]
    loss = 100.0 * (count - len(rtts)) / count
    print(f"rtt_p50_ms={p(0.5):.1f} rtt_p90_ms={p(0.9):.1f} loss_pct={loss:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
