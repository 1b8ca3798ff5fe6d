#!/usr/bin/env python3
"""Check a demo screenshot without extra packages: decode the PNG with zlib and count pixels.

Passes when the image is not blank, shows P2P mesh lines (direct green or relayed orange)
and overlay text (near-white pixels in the top quarter). Usage: check_png.py FILE.PNG
"""
import struct
import sys
import zlib


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, width = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, colour type {color}, interlace {interlace}")
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if width is None:
        raise ValueError("no IHDR chunk")
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line
    return width, height, bpp, rows


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_png.py FILE.PNG")
    w, h, bpp, rows = decode(sys.argv[1])
    drawn = green = orange = text = 0
    for y, line in enumerate(rows):
        for x in range(w):
            r, g, b = line[x * bpp], line[x * bpp + 1], line[x * bpp + 2]
            if not (abs(r - 18) < 14 and abs(g - 20) < 14 and abs(b - 28) < 16):
                drawn += 1
            if g > 140 and g - r > 70 and g - b > 60:
                green += 1
            if r > 170 and 60 <= g < 200 and b < 90 and r - g > 50:
                orange += 1
            if y < h // 4 and r > 200 and g > 200 and b > 200:
                text += 1
    summary = f"{w}x{h}: drawn {drawn}, green {green}, orange {orange}, overlay text {text}"
    problems = []
    if drawn * 100 < w * h:
        problems.append("blank (under 1% of pixels differ from the background)")
    if green + orange < 40:
        problems.append("no mesh lines (green/orange)")
    if text < 40:
        problems.append("no overlay text (white, top quarter)")
    if problems:
        sys.exit(f"screenshot check FAILED ({summary}): " + "; ".join(problems))
    print(f"screenshot check ok ({summary})")


if __name__ == "__main__":
    main()
