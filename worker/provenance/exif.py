"""The few EXIF/TIFF fields generators write, read from a TIFF-structured block.

Not a general EXIF reader: IFD0 and the Exif sub-IFD only, at most MAX_ENTRIES entries
each, every offset checked against the block, strings cut to MAX_STRING characters. A
block whose offsets point outside itself or loop gets a `TiffError`, not a hang.
"""

from __future__ import annotations

import struct

MAX_ENTRIES = 512
MAX_STRING = 64 * 1024
MAX_BLOB = 16 << 20
EXIF_IFD_POINTER = 0x8769
TEXT_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x013B: "Artist"}
USER_COMMENT = 0x9286
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


class TiffError(ValueError):
    pass


def _header(blob: bytes) -> tuple[str, int]:
    if blob[:4] == b"II*\x00":
        order = "<"
    elif blob[:4] == b"MM\x00*":
        order = ">"
    else:
        raise TiffError("not a TIFF-structured block")
    return order, struct.unpack(order + "I", blob[4:8])[0]


def _entries(blob: bytes, order: str, offset: int) -> dict[int, bytes]:
    """tag -> raw value bytes of one IFD."""
    if offset < 8 or offset + 2 > len(blob):
        raise TiffError(f"IFD offset {offset} is outside the block")
    count = struct.unpack(order + "H", blob[offset : offset + 2])[0]
    if count > MAX_ENTRIES:
        raise TiffError(f"an IFD with {count} entries (limit {MAX_ENTRIES})")
    values: dict[int, bytes] = {}
    for n in range(count):
        at = offset + 2 + 12 * n
        if at + 12 > len(blob):
            raise TiffError("IFD entries run past the end of the block")
        tag, kind, items = struct.unpack(order + "HHI", blob[at : at + 8])
        size = TYPE_SIZES.get(kind, 0) * items
        if size == 0 or size > MAX_BLOB:
            continue
        if size <= 4:
            values[tag] = blob[at + 8 : at + 8 + size]
            continue
        start = struct.unpack(order + "I", blob[at + 8 : at + 12])[0]
        if start + size > len(blob):
            raise TiffError(f"tag {tag} points outside the block")
        values[tag] = blob[start : start + size]
    return values


def tag_blobs(blob: bytes, tags: set[int]) -> dict[int, bytes]:
    """Raw values of `tags` in IFD0."""
    order, offset = _header(blob)
    return {tag: value for tag, value in _entries(blob, order, offset).items() if tag in tags}


def fields(blob: bytes) -> dict[str, str]:
    """Software, ImageDescription, Make, Model, Artist (IFD0) and UserComment (Exif IFD), as text."""
    order, offset = _header(blob)
    ifd0 = _entries(blob, order, offset)
    out = {name: _ascii(ifd0[tag]) for tag, name in TEXT_TAGS.items() if tag in ifd0}
    pointer = ifd0.get(EXIF_IFD_POINTER)
    if pointer is not None and len(pointer) == 4:
        sub = struct.unpack(order + "I", pointer)[0]
        if sub != offset:  # a sub-IFD pointing back at IFD0 would only repeat it
            comment = _entries(blob, order, sub).get(USER_COMMENT)
            if comment is not None:
                out["UserComment"] = _user_comment(comment)
    return {k: v for k, v in out.items() if v}


def _ascii(raw: bytes) -> str:
    return raw[:MAX_STRING].split(b"\x00", 1)[0].decode("utf-8", "replace").strip()


def _user_comment(raw: bytes) -> str:
    """8-byte character code, then the text (A1111 writes UNICODE, big-endian UTF-16)."""
    code, text = raw[:8], raw[8 : 8 + 2 * MAX_STRING]
    if code.startswith(b"UNICODE"):
        even_zeros = text[0::2].count(0)
        odd_zeros = text[1::2].count(0)
        return text.decode("utf-16-be" if even_zeros >= odd_zeros else "utf-16-le", "replace").rstrip("\x00").strip()
    return text.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()
