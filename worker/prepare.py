"""CPU work per image, run in worker processes: decode the model's crop, PDQ-hash the pixels.

Top-level functions only: they are pickled into a ProcessPoolExecutor. The GIL would
serialise decoding and hashing in threads; processes let each core decode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from worker.decode import decode_center_crop, decode_rgb
from worker.errors import DECODE_FAILED, InputError
from worker.hashing import pdq_from_pixels, pdq_pixels


@dataclass(frozen=True)
class Prepared:
    crops: np.ndarray | None  # [views, S, S, 3] uint8; None on error
    pdq: str | None
    pdq_quality: int | None
    error: tuple[str, str] | None  # (code, message)
    decode_ms: float


def prepare(data: bytes, crop_size: int, crops: int, max_pixels: int) -> Prepared:
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
        try:
            pdq, quality = pdq_from_pixels(pdq_pixels(data, max_pixels) if is_jpeg else full)
        except Exception:  # noqa: BLE001 - an unhashable image is still scored, just not indexed
            pdq, quality = None, None
        return Prepared(pixels, pdq, quality, None, (time.perf_counter() - started) * 1000)
    except InputError as exc:
        return Prepared(None, None, None, (exc.code, exc.message), (time.perf_counter() - started) * 1000)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the worker process
        return Prepared(None, None, None, (DECODE_FAILED, f"{type(exc).__name__}: {exc}"), (time.perf_counter() - started) * 1000)
