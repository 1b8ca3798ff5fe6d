#!/usr/bin/env python3
"""One STUN Binding request (RFC 8489) from a fixed local address; prints the mapped
address as IP:PORT, or 'timeout'. Used by the netlab to watch a NAT binding expire.

usage: stunprobe.py LOCAL_IP LOCAL_PORT SERVER_IP SERVER_PORT [TIMEOUT_S]
"""
import os
import socket
import struct
import sys

MAGIC = 0x2112A442


def main() -> int:
    lip, lport, sip, sport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
    tid = os.urandom(12)
    # Padded with P2PM-PADDING (0xC050, comprehension-optional) to 128 bytes: our relay
    # answers no request with more bytes than it carried (docs/STUN-NAT.md).
    pad = 128 - 20 - 4
    req = struct.pack("!HHI", 0x0001, 4 + pad, MAGIC) + tid + struct.pack("!HH", 0xC050, pad) + bytes(pad)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((lip, lport))
    s.settimeout(0.5)
    waited = 0.0
    while waited < timeout:
        s.sendto(req, (sip, sport))
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            waited += 0.5
            continue
        if len(data) < 20 or data[8:20] != tid:
            continue
        pos = 20
        while pos + 4 <= len(data):
            atype, alen = struct.unpack("!HH", data[pos:pos + 4])
            val = data[pos + 4:pos + 4 + alen]
            if atype == 0x0020 and alen >= 8:  # XOR-MAPPED-ADDRESS (IPv4)
                port = struct.unpack("!H", val[2:4])[0] ^ (MAGIC >> 16)
                ip = struct.unpack("!I", val[4:8])[0] ^ MAGIC
                print(f"{socket.inet_ntoa(struct.pack('!I', ip))}:{port}")
                return 0
            pos += 4 + ((alen + 3) & ~3)
        print("no-mapped-address")
        return 1
    print("timeout")
    return 1


if __name__ == "__main__":
    sys.exit(main())
