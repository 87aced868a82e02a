"""JPEG through the libjpeg-turbo extension (`engine.imaging._jpeg`): the codings accepted, whole or
DCT-scaled or region decodes, and the luminance a region decode taps on the way for PDQ."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.imaging import _jpeg
from engine.imaging.errors import DECODE_FAILED, IMAGE_TOO_COMPLEX, IMAGE_TRUNCATED, UNSUPPORTED_FORMAT, InputError

# SOFn markers. Baseline, extended and progressive Huffman coding at 8 bits is what cameras,
# phones and browsers produce and what every decode path here handles alike; the rest
# (arithmetic coding, lossless, hierarchical, 12/16-bit) no browser displays, Pillow decodes
# only some of it (arithmetic files fail past its 64 KB buffer), and libjpeg-turbo builds
# differ, so it is refused from the header, identically for the crop, the full decode and PDQ.
_JPEG_SOF = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_JPEG_SOF_REFUSED = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical progressive",
                     0xC7: "hierarchical lossless", 0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded progressive",
                     0xCB: "arithmetic-coded lossless", 0xCD: "arithmetic-coded hierarchical",
                     0xCE: "arithmetic-coded hierarchical progressive", 0xCF: "arithmetic-coded hierarchical lossless"}
MAX_JPEG_SCANS = 64  # typical progressive files have 6-12; each scan re-reads the coefficient buffer (~60 ms at 64 MP)
_JPEG_ERROR_CODES = {"truncated": IMAGE_TRUNCATED, "corrupt": DECODE_FAILED, "too_complex": IMAGE_TOO_COMPLEX,
                     "unsupported": UNSUPPORTED_FORMAT}


class NoRegion(Exception):
    """The file needs a full decode (progressive, multi-scan, CMYK) for its crop."""


def check_jpeg_coding(data: bytes) -> None:
    """Refuse JPEG codings outside baseline/extended/progressive 8-bit, from the frame header."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF or marker in _JPEG_SOF_REFUSED:
            precision = data[i + 4] if i + 4 < len(data) else 0
            if marker in _JPEG_SOF_REFUSED:
                raise InputError(UNSUPPORTED_FORMAT, f"{_JPEG_SOF_REFUSED[marker]} JPEG is not supported")
            if precision != 8:
                raise InputError(UNSUPPORTED_FORMAT, f"{precision}-bit JPEG is not supported (8-bit only)")
            return
        if marker == 0xDA:
            break
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    raise InputError(DECODE_FAILED, "JPEG has no frame header before its first scan")


def decode_jpeg(data: bytes, scale: int = 1, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """RGB pixels by engine.imaging._jpeg: the whole image (DCT-scaled by 1/scale) or (top, left, height, width).

    A region decode entropy-decodes the rows below it too: a file cut short or corrupt after the
    region is refused as a whole decode refuses it.

    CMYK files come back as libjpeg's raw CMYK and are converted the way Pillow converts them
    (Adobe's inverted convention), so pixels stay identical to the reference's."""
    return decode_jpeg_tapped(data, scale, region)[0]


def decode_jpeg_tapped(data: bytes, scale: int = 1, region: tuple[int, int, int, int] | None = None,
                 luma_per_block: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """`decode_jpeg`, and with `luma_per_block` (1 or 2, region decodes only) the image's luminance
    at 1/8 or 1/4 scale from the same pass (None if the decoder could not tap it)."""
    top, left, height, width = region or (0, 0, 0, 0)
    try:
        raw, height, width, channels, luma = _jpeg.decode(data, scale, top, left, height, width, MAX_JPEG_SCANS, luma_per_block)
    except _jpeg.Error as exc:
        kind, message = exc.args
        if kind == "no_region":
            raise NoRegion from None
        raise InputError(_JPEG_ERROR_CODES.get(kind, DECODE_FAILED), f"JPEG: {message}") from None
    plane = np.frombuffer(luma[0], np.uint8).reshape(luma[1], luma[2]) if luma is not None else None
    if channels == 4:
        return np.asarray(Image.frombuffer("CMYK", (width, height), raw, "raw", "CMYK;I", 0, 1).convert("RGB")), plane
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3), plane
