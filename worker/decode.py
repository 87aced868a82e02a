"""Untrusted bytes to RGB pixels, with Pillow restricted to an allow-list of formats.

The format is sniffed from magic bytes and only that decoder is offered to Pillow; the
pixel count is checked from the header before any pixel is decoded; only the first frame
of an animation is read. Modes other than RGB go through `convert("RGB")`, which is what
the DDA reference does (alpha is dropped, not composited), and RGB images skip it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from worker.errors import DECODE_FAILED, IMAGE_TOO_LARGE, IMAGE_TRUNCATED, UNSUPPORTED_FORMAT, InputError

DEFAULT_MAX_PIXELS = 64_000_000  # a 48 MP phone photo fits; a decompression bomb does not

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str:
    """The Pillow format name for `data`, from its leading bytes alone."""
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    raise InputError(UNSUPPORTED_FORMAT, f"not a supported image format (leading bytes {data[:12].hex()})")


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 pixels of the first frame, or InputError with a specific code."""
    if not data:
        raise InputError(UNSUPPORTED_FORMAT, "empty file")
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(IMAGE_TOO_LARGE, f"{width}x{height} is {width * height} pixels, over the cap of {max_pixels}")
            if width == 0 or height == 0:
                raise InputError(DECODE_FAILED, f"image has no pixels ({width}x{height})")
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(IMAGE_TOO_LARGE, str(exc)) from exc
    except OSError as exc:
        if "truncated" in str(exc) or "broken data stream" in str(exc):
            raise InputError(IMAGE_TRUNCATED, f"{fmt} data ends early: {exc}") from exc
        raise InputError(DECODE_FAILED, f"{fmt} could not be decoded: {exc}") from exc
    except (ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise InputError(DECODE_FAILED, f"{fmt} could not be decoded: {exc}") from exc
