"""Crafted files, made here byte by byte: each one an example of a class of hostile input.

Sizes are parameters: the tests use small instances (with a small pixel cap, so they stay
fast), `benchmarks/hostile_inputs.py` the full-size ones the red-team report measured.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.images import encode, photo


def jpeg_declaring(width: int, height: int) -> bytes:
    """A ~140-byte JPEG whose frame header declares width x height, with no scan data at all."""
    real = encode(photo(16, 16, seed=1), "JPEG", quality=50)
    sos = real.index(b"\xff\xda")
    header = bytearray(real[: sos + 2 + int.from_bytes(real[sos + 2 : sos + 4], "big")])
    sof = header.index(b"\xff\xc0")
    header[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(header) + b"\xff\xd9"


def cut_with_end_marker(data: bytes, keep: float) -> bytes:
    """The first `keep` of a JPEG, then an end marker: a file cut short that looks complete."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def jpeg_cut_with_end_marker(width: int = 1600, height: int = 1200, keep: float = 0.5) -> bytes:
    return cut_with_end_marker(encode(photo(width, height, seed=9), "JPEG", quality=90), keep)


def relabel_frame(data: bytes, marker: int, precision: int = 8) -> bytes:
    """A baseline JPEG's frame header relabelled as another coding (0xC9: arithmetic, 0xC3:
    lossless, ...) and sample precision."""
    body = bytearray(data)
    sof = body.index(b"\xff\xc0")
    body[sof + 1] = marker
    body[sof + 4] = precision
    return bytes(body)


def jpeg_with_frame_marker(marker: int) -> bytes:
    return relabel_frame(encode(photo(900, 700, seed=3), "JPEG", quality=90), marker)


def progressive_jpeg_with_scans(width: int, height: int, scans: int) -> bytes:
    """A progressive JPEG of a flat image whose last scan (a refinement of nearly nothing, a few
    bytes) is repeated: each copy makes the decoder walk its whole coefficient buffer again."""
    data = encode(Image.new("RGB", (width, height), (120, 130, 140)), "JPEG", quality=90, progressive=True)
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * scans + data[end:]


def avif_that_fails_to_open() -> bytes:
    """An ISO-BMFF 'avif' brand with a broken box structure behind it."""
    ftyp = struct.pack(">I4s4sI8s", 24, b"ftyp", b"avif", 0, b"avifmif1")
    return ftyp + struct.pack(">I4s", 0xFFFFFFF0, b"meta") + b"\x00" * 64


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def wide_png(width: int) -> bytes:
    """1 x width greyscale: small on disk, huge in one row."""
    return png(Image.new("L", (width, 1), 128))


def grey16_png(side: int) -> bytes:
    return png(Image.new("I;16", (side, side), 1000))


def _tiff(width: int, height: int, tags: list[tuple[int, int, int, list[int]]], blobs: bytes) -> bytes:
    """A little-endian TIFF with one IFD. Tags: (tag, type, count, values); type 3 SHORT, 4 LONG.
    Values that do not fit in 4 bytes are written after the IFD; `blobs` follows them."""
    tags = sorted(tags)
    ifd_size = 2 + 12 * len(tags) + 4
    extra = bytearray()
    entries = []
    base = 8 + ifd_size
    for tag, kind, count, values in tags:
        packed = b"".join(struct.pack("<H" if kind == 3 else "<I", v) for v in values)
        if len(packed) <= 4:
            entries.append(struct.pack("<HHI", tag, kind, count) + packed.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", tag, kind, count, base + len(extra)))
            extra += packed
    head = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + b"".join(entries) + b"\0\0\0\0"
    return head + bytes(extra) + blobs


def _tiled_rgb_tiff(width: int, height: int, tile: int, offsets_from: list[int], blob: bytes, blob_at: int) -> list[tuple[int, int, int, list[int]]]:
    count = len(offsets_from)
    return [(256, 4, 1, [width]), (257, 4, 1, [height]), (258, 3, 3, [8, 8, 8]), (259, 3, 1, [8]), (262, 3, 1, [2]),
            (277, 3, 1, [3]), (284, 3, 1, [1]), (322, 4, 1, [tile]), (323, 4, 1, [tile]),
            (324, 4, count, [blob_at + o for o in offsets_from]), (325, 4, count, [len(blob)] * count)]


def _with_blob(width: int, height: int, tile: int, tiles: int, blob: bytes, shared: bool) -> bytes:
    offsets = [0] * tiles if shared else [i * len(blob) for i in range(tiles)]
    draft = _tiff(width, height, _tiled_rgb_tiff(width, height, tile, offsets, blob, 0), b"")
    blob_at = len(draft)  # the tag layout does not depend on the offsets' values
    data = blob * (1 if shared else tiles)
    return _tiff(width, height, _tiled_rgb_tiff(width, height, tile, offsets, blob, blob_at), data)


def tiff_with_giant_tile(width: int = 400, tile: int = 26752) -> bytes:
    """A small image stored in one tile far larger than itself (decoders allocate the whole tile)."""
    return _with_blob(width, width, tile, 1, zlib.compress(b"\0" * 4096), shared=False)


def tiff_with_shared_tiles(side: int = 4096, tile: int = 512) -> bytes:
    """Every tile points at one compressed blob: each is decompressed again."""
    blob = zlib.compress(b"\x80" * (tile * tile * 3), 9)
    tiles = (-(-side // tile)) ** 2
    return _with_blob(side, side, tile, tiles, blob, shared=True)


def float_tiff(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("F", (side, side), 0.5).save(buf, "TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()


def bmp_rle(width: int, height: int, rle4: bool = False) -> bytes:
    """A run-length coded BMP of one pixel and an end-of-line code per row: Pillow pads each row
    to its width in Python, a byte at a time."""
    bits = 4 if rle4 else 8
    palette = b"".join(bytes((i, i, i, 0)) for i in range(1 << bits))
    pixels = b"\x01\x07\x00\x00" * height + b"\x00\x01"
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 2 if rle4 else 1, len(pixels), 2835, 2835, 1 << bits, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def _saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def extreme_shape(fmt: str, width: int, height: int, mode: str = "L") -> bytes:
    """A flat image, small on disk: of an extreme shape (1 x millions, costly per row or per column) or
    a format costly per pixel (AVIF, WebP)."""
    options: dict[str, object] = {"TIFF": {"compression": "tiff_adobe_deflate"}, "WEBP": {"lossless": True},
                                  "AVIF": {"subsampling": "4:4:4"} if mode == "RGBA" else {}}.get(fmt, {})
    return _saved(Image.new(mode, (width, height), (128,) * len(mode)), fmt, **options)


def animation(fmt: str, side: int, frames: int = 3) -> bytes:
    """A side x side canvas of one flat frame, then frames that each change a few pixels: the
    encoders store those as tiny sub-frames, so the file is small and the canvas large."""
    first = Image.new("RGB", (side, side), (30, 60, 90))
    later = []
    for n in range(1, frames):
        frame = first.copy()
        frame.paste((200, 20 * n, 40), (8 * n, 8 * n, 8 * n + 4, 8 * n + 4))
        later.append(frame)
    options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    return _saved(first, fmt, save_all=True, append_images=later, duration=100, **options)


def webp_declaring_canvas(width: int, height: int) -> bytes:
    """A small animated WebP whose extended header declares a width x height canvas: libwebp
    allocates canvases of that size when the file is opened, before any frame is read."""
    data = bytearray(animation("WEBP", 16, 2))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)
