"""Content hashes for the verdict cache: SHA-256 of the bytes, PDQ of the pixels.

PDQ looks at a 64x64 luminance summary of the whole image, and its own cost grows with its
input (4.6 ms for a 400x630 input, 0.4 ms for 126x200 here), so a JPEG is hashed from a
DCT-scaled decode (1/2, 1/4 or 1/8 in libjpeg's IDCT itself): the smallest whose short side is
still at least PDQ_MIN_SIDE, or PDQ_SMALL_MIN_SIDE for JPEGs whose short side is under
SMALL_BELOW (downscaling small images moves their hash most). In `worker.prepare` that
scaled decode is also the pass that checks the whole file's integrity, so the crop's region
decode stops at the crop. `benchmarks/decode_crop.py` measures the time and the Hamming
distance to a full-decode hash.
"""

from __future__ import annotations

import hashlib

import numpy as np

from engine.decode import DEFAULT_MAX_PIXELS, decode_jpeg, decode_rgb, open_checked

PDQ_MIN_SIDE = 120  # short side of a DCT-scaled JPEG decode
SMALL_BELOW = 900  # JPEGs with a shorter short side keep more of it:
PDQ_SMALL_MIN_SIDE = 256
PDQ_BOX_MIN_SIDE = 512  # each side of a box-reduced decode of other formats


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pdq_from_pixels(rgb: np.ndarray) -> tuple[str, int]:
    """(64 hex digits, quality 0-100) of an HxWx3 uint8 image."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


def box_reduce(rgb: np.ndarray, min_side: int = PDQ_BOX_MIN_SIDE) -> np.ndarray:
    """Mean of f x f blocks, f per axis the largest that keeps that side at least `min_side`.

    PDQ box-filters its input down to 64x64 anyway; doing the first part here keeps its float
    buffers small (it needs ~18 bytes a pixel: 1.1 GB for 64 MP) and its time down, at a cost
    of a few bits of hash distance (see README). The sum runs over f*f strided views of the
    image into one small uint32 buffer: no temporary as large as the image."""
    fy, fx = max(1, rgb.shape[0] // min_side), max(1, rgb.shape[1] // min_side)
    if fy == fx == 1:
        return rgb
    h, w = rgb.shape[0] // fy, rgb.shape[1] // fx
    whole_blocks = rgb[: h * fy, : w * fx]
    total = np.zeros((h, w, 3), np.uint32)
    for y in range(fy):
        for x in range(fx):
            total += whole_blocks[y::fy, x::fx]
    area = fy * fx
    out: np.ndarray = ((total + area // 2) // area).astype(np.uint8)
    return out


def pdq_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> np.ndarray:
    """Pixels to hash: a DCT-scaled decode for JPEGs, a box-reduced full decode for other
    formats (both when `draft`); the full decode otherwise.

    Call after `decode_rgb` or `decode_center_crop` accepted the bytes."""
    if not draft:
        return decode_rgb(data, max_pixels)
    if not data.startswith(b"\xff\xd8\xff"):
        return box_reduce(decode_rgb(data, max_pixels))
    with open_checked(data, max_pixels) as image:
        width, height = image.size
    return decode_jpeg(data, jpeg_pdq_scale(height, width))


def jpeg_pdq_scale(height: int, width: int) -> int:
    """The DCT scaling denominator of a JPEG's PDQ decode (see the module's docstring)."""
    short_side = min(height, width)
    least = PDQ_SMALL_MIN_SIDE if short_side < SMALL_BELOW else PDQ_MIN_SIDE
    return next(s for s in (8, 4, 2, 1) if s == 1 or short_side // s >= least)


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")
