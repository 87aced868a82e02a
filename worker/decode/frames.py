"""The decode processes' wire, both directions: a frame is two little-endian uint32 (the header's
and the payload's length), a JSON header, then the payload's raw bytes. Never pickle: a process
that parses hostile images must not be able to make its parent run code by what it sends back."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import IO, Any

FRAME = struct.Struct("<II")  # header length, payload length
MAX_HEADER = 1 << 20  # a longer header is not this protocol: the process is treated as broken


def write_frame(stream: IO[bytes], header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    blob = json.dumps(header).encode()
    stream.write(FRAME.pack(len(blob), len(payload)))
    stream.write(blob)
    stream.write(payload)
    stream.flush()


def read_frame(read: Callable[[int], bytes | None]) -> tuple[dict[str, Any], bytes] | None:
    """The next frame; None where `read` (exactly n bytes, or None at the end of the stream) ends.
    ValueError for what is not a frame; whatever `read` raises (a deadline, a death) passes through."""
    head = read(FRAME.size)
    if head is None:
        return None
    header_size, payload_size = FRAME.unpack(head)
    if header_size > MAX_HEADER:
        raise ValueError(f"a frame header of {header_size} bytes: not this protocol")
    header = read(header_size)
    payload = read(payload_size) if payload_size else b""
    if header is None or payload is None:
        return None
    decoded = json.loads(header)
    if not isinstance(decoded, dict):
        raise ValueError("a frame header that is not a JSON object")
    return decoded, payload
