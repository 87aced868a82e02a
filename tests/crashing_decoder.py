"""A decode child for tests: crashes (os._exit) on bytes that start with b"CRASH", sleeps on b"SLOW",
spins the CPU on b"SPIN"; after decoding, crashes or sleeps reading metadata of files that hold
b"CRASH-IN-METADATA" or b"SLOW-IN-METADATA". For the shared-memory slot: on an image prefixed
b"LIE-SLOT" it decodes the image, then claims pixels larger than its slot; b"LIE-SHAPE", pixels of
another shape; b"VANISH" dies after writing the slot, before its answer.

Stands in for a decoder that segfaults or loops on a crafted file, which no test can count on.
"""

from __future__ import annotations

import os
import time

import worker.decode.prepare
import worker.provenance.report
from worker.decode import child as decode_child

_real = worker.decode.prepare.prepare
_real_provenance = worker.provenance.report.read_provenance
_real_write = decode_child.write_frame
_lie: list[bytes] = [b""]
LIES = (b"LIE-SLOT", b"LIE-SHAPE", b"VANISH")


def prepare(data: bytes, crop_size: int, crops: int, max_pixels: int, hash_pdq: bool = True,
            second: tuple[int, int] | None = None) -> worker.decode.prepare.Prepared:
    if data.startswith(b"CRASH"):
        os._exit(139)
    if data.startswith(b"SLOW"):
        time.sleep(60)
    if data.startswith(b"SPIN"):
        while True:
            pass
    _lie[0] = next((lie for lie in LIES if data.startswith(lie)), b"")
    return _real(data[len(_lie[0]) :], crop_size, crops, max_pixels, hash_pdq, second)


def write_frame(stream: object, header: dict[str, object], payload: bytes = b"") -> None:
    if _lie[0] == b"VANISH" and header.get("in_slot"):
        os._exit(137)  # the pixels are in the slot; the answer never comes
    if _lie[0] == b"LIE-SLOT" and header.get("in_slot"):
        header = {**header, "shape": [1, 4000, 4000, 3]}
    if _lie[0] == b"LIE-SHAPE" and header.get("in_slot"):
        header = {**header, "shape": [1, 336, 336, 4]}
    _real_write(stream, header, payload)  # type: ignore[arg-type]


def read_provenance(data: bytes) -> dict[str, object]:
    if b"CRASH-IN-METADATA" in data:
        os._exit(139)
    if b"SLOW-IN-METADATA" in data:
        time.sleep(60)
    return _real_provenance(data)


if __name__ == "__main__":
    worker.decode.prepare.prepare = prepare
    worker.provenance.report.read_provenance = read_provenance
    decode_child.write_frame = write_frame  # type: ignore[assignment]
    decode_child.main()
