"""CPU work per image, run in the decode processes (`worker.decode.child`): decode the
model's crop, PDQ-hash the pixels. Processes, not threads: the GIL would serialise decoding,
and a hostile file's crash or resource use stays in its own process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.imaging.decode import as_input_error, decode_crop, decode_rgb
from engine.imaging.jpeg import decode_jpeg
from worker.cache.hashing import jpeg_luma_per_block, pdq_from_luma, pdq_from_pixels


@dataclass(frozen=True)
class Prepared:
    crops: np.ndarray | None  # [views, S, S, 3] uint8; None on error
    pdq: str | None
    pdq_quality: int | None
    error: tuple[str, str] | None  # (code, message)
    decode_ms: float
    pdq_error: str | None = None  # why a decoded image has no PDQ hash
    provenance: dict[str, Any] | None = None  # `worker.provenance.report`; None when not read
    provenance_ms: float = 0.0
    second: np.ndarray | None = None  # [S2, S2, 3] uint8: the second model's crop, when one was asked for


def prepare(data: bytes, crop_size: int, crops: int, max_pixels: int, hash_pdq: bool = True,
            second: tuple[int, int] | None = None) -> Prepared:
    """Never raises for bad input: an error is returned, so one image cannot stop the pool.

    Every file is decoded once for crop, integrity and hash (see `worker.cache.hashing`); a larger
    single-scan JPEG's hash comes from the luminance its region decode tapped. `second`: (the
    shorter side scaled to, crop) of a second model that scales first: the whole image is
    decoded then (its centre crop is bit-identical to the region decode's)."""
    from engine.imaging.preprocess import center_crop, resize_shorter, views

    started = time.perf_counter()
    luma: np.ndarray | None = None
    extra: np.ndarray | None = None
    try:
        if crops == 1 and second is None:
            decoded = decode_crop(data, crop_size, max_pixels, jpeg_luma_per_block if hash_pdq else None)
            pixels, whole, luma = decoded.crop[None], decoded.whole, decoded.luma
            if hash_pdq and whole is None and luma is None:  # the decoder could not tap this file: a scaled decode
                whole = decode_jpeg(data, 8 // jpeg_luma_per_block(decoded.height, decoded.width))
        else:
            whole = decode_rgb(data, max_pixels)
            pixels = views(whole, crops, crop_size)
            if second is not None:
                extra = center_crop(resize_shorter(whole, second[0]), second[1])
    except Exception as exc:  # noqa: BLE001 - see as_input_error: one image cannot stop the pool
        error = as_input_error(exc)
        return Prepared(None, None, None, (error.code, error.message), (time.perf_counter() - started) * 1000)
    pdq = quality = pdq_error = None
    if hash_pdq:
        try:
            if luma is not None:
                pdq, quality = pdq_from_luma(luma)
            else:
                assert whole is not None  # a whole decode, or the scaled one above
                pdq, quality = pdq_from_pixels(whole)
        except Exception as exc:  # noqa: BLE001 - an unhashable image is still scored, with the reason stated
            pdq_error = as_input_error(exc).message
    return Prepared(pixels, pdq, quality, None, (time.perf_counter() - started) * 1000, pdq_error, second=extra)
