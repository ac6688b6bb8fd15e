#!/usr/bin/env python3
"""Synthesises the small document-like PNGs used by the model parity fixtures.

Standard library only (zlib + struct), deterministic: running it again writes the same bytes.
Usage: python3 tools/reference/make_test_images.py [OUT_DIR]   (default tests/fixtures/model/images)
"""
import os
import struct
import sys
import zlib


def lcg(seed):
    state = seed & 0xFFFFFFFF
    while True:
        state = (1103515245 * state + 12345) & 0x7FFFFFFF
        yield state


def document(width, height, seed, header_rgb):
    """A page: light paper with noise, a coloured header band, dark 'text' strokes, a table grid."""
    rnd = lcg(seed)
    px = bytearray(width * height * 3)
    for y in range(height):
        for x in range(width):
            n = next(rnd) % 13
            r = g = b = 236 + n - 6 + (x * 7 + y * 3) % 9
            if y < height // 8:  # header band with a horizontal gradient
                t = x / max(1, width - 1)
                r = int(header_rgb[0] * (1 - t) + 255 * t * 0.3)
                g = int(header_rgb[1] * (1 - t) + 255 * t * 0.3)
                b = int(header_rgb[2] * (1 - t) + 255 * t * 0.3)
            else:
                line = (y - height // 8) % 11
                word = (x // 5 + y // 11 * 3) % 9
                if 3 <= line <= 7 and word < 6 and 6 <= x < width - 6:
                    stroke = ((x * 5 + y * 3 + (x // 3) * (y % 5)) % 7) < 3
                    if stroke:
                        r, g, b = 30 + n, 32 + n, 40 + n
                if x % 61 == 0 or (y - height // 8) % 44 == 0:  # table rules
                    r, g, b = 120, 130, 150
            i = (y * width + x) * 3
            px[i] = max(0, min(255, r))
            px[i + 1] = max(0, min(255, g))
            px[i + 2] = max(0, min(255, b))
    return bytes(px)


def write_png(path, width, height, rgb):
    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


IMAGES = [
    # name, width, height, seed, header colour
    ("page_252x196.png", 252, 196, 1, (20, 60, 140)),   # multiples of 28: merged grid 7x9
    ("form_150x120.png", 150, 120, 2, (140, 30, 40)),   # resized to 140x112: merged grid 4x5
    ("strip_84x170.png", 84, 170, 3, (20, 110, 60)),    # resized to 84x168: merged grid 6x3
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "model", "images")
    os.makedirs(out, exist_ok=True)
    for name, w, h, seed, header in IMAGES:
        write_png(os.path.join(out, name), w, h, document(w, h, seed, header))
        print(os.path.join(out, name))


if __name__ == "__main__":
    main()
