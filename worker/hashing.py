"""Content hashes for the verdict cache: SHA-256 of the bytes, PDQ of the pixels.

PDQ looks at a 64x64 luminance summary of the whole image, so decoding a 12 MP JPEG at
full resolution to hash it is wasted work: JPEGs are decoded DCT-scaled (1/2, 1/4 or 1/8
in libjpeg's IDCT itself, as Pillow's draft mode does) to the smallest size whose short side is still
at least PDQ_MIN_SIDE. `benchmarks/decode_crop.py` measures the time and the Hamming
distance this costs against a full decode.
"""

from __future__ import annotations

import hashlib

import numpy as np

from engine.decode import DEFAULT_MAX_PIXELS, decode_jpeg, decode_rgb, open_checked

PDQ_MIN_SIDE = 256  # short side of a DCT-scaled JPEG decode
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

    PDQ box-filters its input down to 64x64 anyway; doing the first part here in uint32 bands
    keeps its float buffers small (it needs ~18 bytes a pixel: 1.1 GB for 64 MP) and its time
    down (2.5 s for 64 MP), at a cost of a few bits of hash distance (see README)."""
    fy, fx = max(1, rgb.shape[0] // min_side), max(1, rgb.shape[1] // min_side)
    if fy == fx == 1:
        return rgb
    h, w = rgb.shape[0] // fy, rgb.shape[1] // fx
    out = np.empty((h, w, 3), np.uint8)
    area = fy * fx
    rows = max(1, (1 << 20) // max(1, w * area))
    for top in range(0, h, rows):
        n = min(rows, h - top)
        block = rgb[top * fy : (top + n) * fy, : w * fx].reshape(n, fy, w, fx, 3).sum(axis=(1, 3), dtype=np.uint32)
        out[top : top + n] = (block + area // 2) // area
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
        short_side = min(image.size)
    scale = next(s for s in (8, 4, 2, 1) if s == 1 or short_side // s >= PDQ_MIN_SIDE)
    return decode_jpeg(data, scale)


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")
