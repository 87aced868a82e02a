"""PNG chunk walking: what both the pixel decoder (which drops text chunks before Pillow
sees them) and the metadata reader (which reads them) need, bounded in steps."""

from __future__ import annotations

import struct
from collections.abc import Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
MAX_CHUNKS = 100_000


class Unfinished(ValueError):
    """A walk ended before the container's end; the message says why."""


def png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of each whole chunk (length, type, body, CRC) up to IEND included; raises
    Unfinished, after the chunks it could read, when the file ends first or has too many."""
    pos = 8
    for _ in range(MAX_CHUNKS):
        if pos + 8 > len(data):
            raise Unfinished("PNG chunks end without IEND")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise Unfinished(f"PNG chunk {kind!r} runs past the end of the file")
        yield kind, pos, end
        if kind == b"IEND":
            return
        pos = end
    raise Unfinished(f"more than {MAX_CHUNKS} PNG chunks; the rest were not read")
