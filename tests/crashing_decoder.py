"""A decode child for tests: crashes (os._exit) on bytes that start with b"CRASH", sleeps on b"SLOW",
spins the CPU on b"SPIN".

Stands in for a decoder that segfaults or loops on a crafted file, which no test can count on.
"""

from __future__ import annotations

import os
import sys
import time

import worker.prepare
from worker import decode_child

_real = worker.prepare.prepare


def prepare(data: bytes, crop_size: int, crops: int, max_pixels: int, hash_pdq: bool = True) -> worker.prepare.Prepared:
    if data.startswith(b"CRASH"):
        os._exit(139)
    if data.startswith(b"SLOW"):
        time.sleep(60)
    if data.startswith(b"SPIN"):
        while True:
            pass
    return _real(data, crop_size, crops, max_pixels, hash_pdq)


if __name__ == "__main__":
    worker.prepare.prepare = prepare
    decode_child.die_with_parent(int(sys.argv[1]))
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr
    decode_child.serve(sys.stdin.buffer, answers, int(sys.argv[2]), int(sys.argv[3]))
