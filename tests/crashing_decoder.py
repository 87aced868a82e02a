"""A decode child for tests: crashes (os._exit) on bytes that start with b"CRASH", sleeps on b"SLOW",
spins the CPU on b"SPIN"; after decoding, crashes or sleeps reading metadata of files that hold
b"CRASH-IN-METADATA" or b"SLOW-IN-METADATA".

Stands in for a decoder that segfaults or loops on a crafted file, which no test can count on.
"""

from __future__ import annotations

import os
import sys
import time

import worker.prepare
import worker.provenance.report
from engine import lifetime
from worker import decode_child

_real = worker.prepare.prepare
_real_provenance = worker.provenance.report.read_provenance


def prepare(data: bytes, crop_size: int, crops: int, max_pixels: int, hash_pdq: bool = True) -> worker.prepare.Prepared:
    if data.startswith(b"CRASH"):
        os._exit(139)
    if data.startswith(b"SLOW"):
        time.sleep(60)
    if data.startswith(b"SPIN"):
        while True:
            pass
    return _real(data, crop_size, crops, max_pixels, hash_pdq)


def read_provenance(data: bytes) -> dict[str, object]:
    if b"CRASH-IN-METADATA" in data:
        os._exit(139)
    if b"SLOW-IN-METADATA" in data:
        time.sleep(60)
    return _real_provenance(data)


if __name__ == "__main__":
    worker.prepare.prepare = prepare
    worker.provenance.report.read_provenance = read_provenance
    lifetime.die_with_parent(int(sys.argv[1]))
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr
    decode_child.serve(sys.stdin.buffer, answers, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
