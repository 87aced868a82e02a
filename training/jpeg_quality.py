"""Estimate the quality a JPEG was saved with, from its quantisation tables.

DDA compresses each fake at its real image's own quality, so that JPEG artefacts stop
being a shortcut. libjpeg derives its tables by scaling two standard tables by the
quality factor; the tables Pillow writes for every quality 1-100 are computed once and
the file's tables matched against them (nearest in L1 for non-libjpeg encoders).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=1)
def _reference_tables() -> dict[int, np.ndarray]:
    sample = Image.new("RGB", (16, 16), (128, 64, 32))
    tables = {}
    for quality in range(1, 101):
        buf = io.BytesIO()
        sample.save(buf, "JPEG", quality=quality, subsampling=2)
        with Image.open(buf) as again:
            tables[quality] = np.array([again.quantization[0], again.quantization[1]], dtype=np.int64)
    return tables


def estimate_quality(image: Image.Image) -> int | None:
    """1-100 for a JPEG, None for anything without quantisation tables."""
    quantization = getattr(image, "quantization", None)
    if not quantization or 0 not in quantization:
        return None
    luma = np.array(quantization[0], dtype=np.int64)
    chroma = np.array(quantization.get(1, quantization[0]), dtype=np.int64)
    best, best_error = 100, None
    for quality, ref in _reference_tables().items():
        error = int(np.abs(ref[0] - luma).sum() + np.abs(ref[1] - chroma).sum())
        if best_error is None or error < best_error or (error == best_error and quality > best):
            best, best_error = quality, error
    return best
