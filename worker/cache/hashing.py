"""Content hashes for the verdict cache: SHA-256 of the bytes, PDQ of the pixels.

PDQ is computed by `engine.imaging._pdq` in one pass over the pixels (bit-identical to the pdqhash
package on the same pixels, ~10x cheaper, no full-size float buffers; tests/worker/cache/test_pdq.py
checks every image in ../shared/data). What it hashes (`worker.decode.prepare`):
- a small JPEG (short side under SMALL_BELOW) and every other file: the whole decode that also
  gave the model's crop, at full resolution;
- a larger single-scan JPEG: the luminance its crop's region decode tapped from the Y
  coefficients on the way through the file (1/8 scale, or 1/4 while 1/8 would leave the short
  side under PDQ_MIN_SIDE), so the file is decoded once for crop, integrity and hash.
"""

from __future__ import annotations

import hashlib

import numpy as np

from engine.imaging import _pdq

PDQ_MIN_SIDE = 120  # short side of the tapped luminance of a larger JPEG
SMALL_BELOW = 900  # JPEGs with a shorter short side are hashed from their whole decode


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pdq_from_pixels(rgb: np.ndarray) -> tuple[str, int]:
    """(64 hex digits, quality 0-100) of an HxWx3 uint8 image."""
    rgb = np.ascontiguousarray(rgb)
    digest, quality = _pdq.rgb(rgb, rgb.shape[0], rgb.shape[1])
    return digest.hex(), quality


def pdq_from_luma(luma: np.ndarray) -> tuple[str, int]:
    """(64 hex digits, quality 0-100) of an HxW uint8 luminance plane."""
    luma = np.ascontiguousarray(luma)
    digest, quality = _pdq.luma(luma, luma.shape[0], luma.shape[1])
    return digest.hex(), quality


def jpeg_luma_per_block(height: int, width: int) -> int:
    """For `engine.imaging.decode.decode_crop`: samples per 8x8 block of a JPEG's tapped luminance (1: 1/8
    scale, 2: 1/4), or 0 for a small JPEG, hashed from its whole decode instead."""
    short_side = min(height, width)
    if short_side < SMALL_BELOW:
        return 0
    return 1 if short_side // 8 >= PDQ_MIN_SIDE else 2


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")
