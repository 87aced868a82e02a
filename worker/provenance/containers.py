"""Where metadata lives in an image file, found by walking its container's structure.

Only structure is read here, never pixels, and every walk is bounded: a file can hold any
number of chunks or segments, any length field can lie, and a zTXt chunk can inflate a
thousandfold. What the walk finds is raw material (XMP packets, EXIF blobs, text chunks,
whether a C2PA manifest store is embedded and how large); what a bound or a lie cut short
is recorded in `problems`, and the walk keeps what it had.

Formats: JPEG (APP1 EXIF/XMP, APP11 JUMBF, COM), PNG (tEXt/zTXt/iTXt, eXIf, caBX), WebP
(RIFF `EXIF`, `XMP `, `C2PA`), ISO BMFF (HEIF/AVIF: the C2PA `uuid` box) and TIFF (tags 700
XMP and 52545 C2PA, the IFD0 EXIF fields). Anything else: no metadata.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from engine.imaging.png_chunks import MAX_CHUNKS, PNG_SIGNATURE, TEXT_CHUNKS, Unfinished, png_chunks

MAX_WALK_STEPS = MAX_CHUNKS  # chunks, segments or boxes visited, in every container
MAX_TEXT_ITEMS = 64  # text chunks / comments kept
MAX_TEXT_BYTES = 1 << 20  # one text value, after inflating
MAX_TOTAL_TEXT_BYTES = 4 << 20
MAX_XMP_BYTES = 1 << 20  # all XMP of one file, extended XMP included
MAX_EXIF_BYTES = 1 << 20
MAX_C2PA_BYTES = 16 << 20  # an embedded manifest store larger than this is not read

C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENSION_APP1 = b"http://ns.adobe.com/xmp/extension/\x00"


@dataclass
class Found:
    """Metadata found in one file; `problems` says what could not be read and why."""

    mime: str | None = None
    xmp: list[bytes] = field(default_factory=list)
    exif: list[bytes] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where: "png:parameters", value)
    c2pa_bytes: int = 0  # size of the embedded manifest store(s); 0: none
    problems: list[str] = field(default_factory=list)
    _text_total: int = 0
    _xmp_total: int = 0

    def add_text(self, where: str, value: bytes) -> None:
        if len(self.texts) >= MAX_TEXT_ITEMS:
            self.problem(f"more than {MAX_TEXT_ITEMS} text chunks; the rest were not read")
            return
        if self._text_total + len(value) > MAX_TOTAL_TEXT_BYTES:
            self.problem(f"text chunks over {MAX_TOTAL_TEXT_BYTES >> 20} MiB in all; the rest were not read")
            return
        self._text_total += len(value)
        self.texts.append((where, value.decode("utf-8", "replace")))

    def add_xmp(self, packet: bytes) -> None:
        if self._xmp_total + len(packet) > MAX_XMP_BYTES:
            self.problem(f"XMP over {MAX_XMP_BYTES >> 20} MiB; not read")
            return
        self._xmp_total += len(packet)
        self.xmp.append(packet)

    def add_exif(self, blob: bytes) -> None:
        if len(blob) > MAX_EXIF_BYTES:
            self.problem(f"EXIF of {len(blob)} bytes is over {MAX_EXIF_BYTES >> 20} MiB; not read")
        elif len(self.exif) < 4:
            self.exif.append(blob)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


def find(data: bytes) -> Found:
    """Walk `data`'s container; never raises for any input."""
    if data[:3] == b"\xff\xd8\xff":
        found = Found("image/jpeg")
        _jpeg(data, found)
    elif data[:8] == PNG_SIGNATURE:
        found = Found("image/png")
        _png(data, found)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found = Found("image/webp")
        _webp(data, found)
    elif data[4:8] == b"ftyp":
        found = Found(_bmff_mime(data))
        _bmff(data, found)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        found = Found("image/tiff")
        _tiff(data, found)
    else:
        return Found()
    return found


def _jpeg(data: bytes, found: Found) -> None:
    """Marker segments up to the first scan; metadata never follows it in files writers make."""
    pos, extended = 2, bytearray()
    for _ in range(MAX_WALK_STEPS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            found.problem("JPEG segments end before the image data")
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            found.problem("a JPEG segment runs past the end of the file")
            break
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            found.add_exif(body[6:])
        elif marker == 0xE1 and body.startswith(XMP_APP1):
            found.add_xmp(body[len(XMP_APP1) :])
        elif marker == 0xE1 and body.startswith(XMP_EXTENSION_APP1):
            chunk = body[len(XMP_EXTENSION_APP1) + 40 :]  # GUID (32) + full length (4) + offset (4)
            if len(extended) + len(chunk) <= MAX_XMP_BYTES:
                extended += chunk
            else:
                found.problem(f"extended XMP over {MAX_XMP_BYTES >> 20} MiB; not read")
        elif marker == 0xEB and body[:2] == b"JP":  # APP11: JUMBF, C2PA's home in JPEG
            found.c2pa_bytes += len(body)
        elif marker == 0xFE:
            found.add_text("jpeg:comment", body)
        pos += 2 + length
    else:
        found.problem(f"more than {MAX_WALK_STEPS} JPEG segments; the rest were not read")
    if extended:
        found.add_xmp(bytes(extended))


def _png(data: bytes, found: Found) -> None:
    try:
        for kind, start, end in png_chunks(data):
            if kind in TEXT_CHUNKS:
                _png_text(kind, data[start + 8 : end - 4], found)
            elif kind == b"eXIf":
                found.add_exif(data[start + 8 : end - 4])
            elif kind == b"caBX":
                found.c2pa_bytes += end - start - 12
    except Unfinished as exc:
        found.problem(str(exc))


def _png_text(kind: bytes, body: bytes, found: Found) -> None:
    key, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(key) <= 79:
        found.problem(f"a PNG {kind.decode()} chunk has no valid keyword")
        return
    name = key.decode("latin-1")
    if kind == b"tEXt":
        value: bytes | None = _bounded(rest, found, name)
    elif kind == b"zTXt":
        value = _inflate(rest[1:], found, name)
    else:  # iTXt: compression flag, method, language tag\0, translated keyword\0, text
        if len(rest) < 2:
            found.problem(f"PNG iTXt chunk {name!r} is cut short")
            return
        compressed, tail = rest[0], rest[2:]
        _language, _, tail = tail.partition(b"\x00")
        _translated, _, text = tail.partition(b"\x00")
        value = _inflate(text, found, name) if compressed else _bounded(text, found, name)
    if value is None:
        return
    if name == "XML:com.adobe.xmp":
        found.add_xmp(value)
    elif name == "Raw profile type exif" or name == "Raw profile type APP1":
        return  # ImageMagick's hex dump of EXIF: rare, and eXIf carries the same
    else:
        found.add_text(f"png:{name}", value)


def _bounded(value: bytes, found: Found, name: str) -> bytes | None:
    if len(value) > MAX_TEXT_BYTES:
        found.problem(f"PNG text chunk {name!r} of {len(value)} bytes is over {MAX_TEXT_BYTES >> 20} MiB; not read")
        return None
    return value


def _inflate(blob: bytes, found: Found, name: str) -> bytes | None:
    """At most MAX_TEXT_BYTES out, whatever the ratio: a bomb stops at the bound."""
    try:
        inflater = zlib.decompressobj()
        out = inflater.decompress(blob, MAX_TEXT_BYTES)
    except zlib.error:
        found.problem(f"PNG text chunk {name!r} does not inflate")
        return None
    if inflater.unconsumed_tail:
        found.problem(f"PNG text chunk {name!r} inflates past {MAX_TEXT_BYTES >> 20} MiB; not read")
        return None
    return out


def _webp(data: bytes, found: Found) -> None:
    pos, end = 12, min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    for _ in range(MAX_WALK_STEPS):
        if pos + 8 > end:
            return
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            found.problem(f"WebP chunk {kind!r} runs past the end of the file")
            return
        if kind == b"EXIF":
            found.add_exif(body[6:] if body.startswith(b"Exif\x00\x00") else body)
        elif kind == b"XMP ":
            found.add_xmp(body)
        elif kind == b"C2PA":
            found.c2pa_bytes += length
        pos += 8 + length + (length & 1)
    found.problem(f"more than {MAX_WALK_STEPS} WebP chunks; the rest were not read")


def _bmff_mime(data: bytes) -> str:
    brand = data[8:12]
    return "image/avif" if brand in (b"avif", b"avis") else "image/heif"


def _bmff(data: bytes, found: Found) -> None:
    """Top-level boxes only: that is where C2PA puts its `uuid` box."""
    pos = 0
    for _ in range(MAX_WALK_STEPS):
        if pos + 8 > len(data):
            return
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1 and pos + 16 <= len(data):
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if size < header or pos + size > len(data):
            found.problem(f"box {kind!r} runs past the end of the file")
            return
        if kind == b"uuid" and data[pos + header : pos + header + 16] == C2PA_UUID:
            found.c2pa_bytes += size
        pos += size
    found.problem(f"more than {MAX_WALK_STEPS} boxes; the rest were not read")


def _tiff(data: bytes, found: Found) -> None:
    from worker.provenance.exif import TiffError, tag_blobs

    try:
        blobs = tag_blobs(data, {700, 52545})
    except TiffError as exc:
        found.problem(f"TIFF: {exc}")
        return
    if 700 in blobs:
        found.add_xmp(blobs[700])
    if 52545 in blobs:
        found.c2pa_bytes += len(blobs[52545])
    found.exif.append(data)  # a TIFF is its own EXIF block (IFD0 holds Software etc.); reading it is bounded by entries
