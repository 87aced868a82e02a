"""CPU work per image, run in the decode processes (`worker.decode_child`): decode the
model's crop, PDQ-hash the pixels. Processes, not threads: the GIL would serialise decoding,
and a hostile file's crash or resource use stays in its own process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.decode import as_input_error, decode_center_crop, decode_rgb
from worker.hashing import box_reduce, pdq_from_pixels, pdq_pixels


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


def prepare(data: bytes, crop_size: int, crops: int, max_pixels: int, hash_pdq: bool = True) -> Prepared:
    """Never raises for bad input: an error is returned, so one image cannot stop the pool."""
    from engine.preprocess import views

    started = time.perf_counter()
    try:
        # JPEGs: partial decode for the crop, DCT-scaled decode for PDQ. Anything else is decoded
        # once, in full, and that one decode serves both.
        is_jpeg = data[:3] == b"\xff\xd8\xff"
        full = None
        if crops == 1 and is_jpeg:
            pixels = decode_center_crop(data, crop_size, max_pixels)[None]
        else:
            full = decode_rgb(data, max_pixels)
            pixels = views(full, crops, crop_size)
    except Exception as exc:  # noqa: BLE001 - see as_input_error: one image cannot stop the pool
        error = as_input_error(exc)
        return Prepared(None, None, None, (error.code, error.message), (time.perf_counter() - started) * 1000)
    pdq = quality = pdq_error = None
    if hash_pdq:
        try:
            pdq, quality = pdq_from_pixels(pdq_pixels(data, max_pixels) if full is None else box_reduce(full))
        except Exception as exc:  # noqa: BLE001 - an unhashable image is still scored, with the reason stated
            pdq_error = as_input_error(exc).message
    return Prepared(pixels, pdq, quality, None, (time.perf_counter() - started) * 1000, pdq_error)
