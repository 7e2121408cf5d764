#!/usr/bin/env python3
"""Benchmark rootfs trees made of this machine's own files, so they compress like real ones.

    gen_tree.py small DIR   10 000 files of 0.5-16 KiB (text and binaries cut from /usr)
    gen_tree.py big DIR     4 files of 256 MiB (binaries and libraries from /usr, repeated)

Deterministic for a given machine (fixed seed); the caller caches the result.
"""
import os
import random
import sys

SOURCES = ["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc", "/usr/share/man", "/usr/lib/python3"]


def source_files():
    for top in SOURCES:
        for dirpath, _, names in os.walk(top):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    yield path


def pool(limit):
    """Up to `limit` bytes of real file content, one file after another."""
    chunks, total = [], 0
    for path in source_files():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(chunks)


def small(root):
    rng = random.Random(7)
    data = pool(64 << 20)
    for i in range(10_000):
        size = rng.randint(512, 16 << 10)
        start = rng.randrange(0, len(data) - size)
        d = os.path.join(root, f"d{i // 250:02d}", f"s{(i // 25) % 10}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(data[start : start + size])


def big(root):
    data = pool(256 << 20)
    os.makedirs(root, exist_ok=True)
    for i in range(4):
        with open(os.path.join(root, f"big{i}.bin"), "wb") as f:
            written, offset = 0, i * (len(data) // 4)
            while written < 256 << 20:
                piece = data[offset : offset + min(len(data) - offset, (256 << 20) - written)]
                f.write(piece)
                written += len(piece)
                offset = 0


if __name__ == "__main__":
    kind, root = sys.argv[1], sys.argv[2]
    {"small": small, "big": big}[kind](root)
