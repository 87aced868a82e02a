"""Untrusted bytes to RGB pixels, with Pillow restricted to an allow-list of formats.

The format is sniffed from magic bytes and only that decoder is offered to Pillow; the
pixel count is checked from the header before any pixel is decoded; only the first frame
of an animation is read; a file that ends early is an error, never a partly grey image.

Modes, deliberately:
- RGB is used as is (no `convert`, which costs ~15 ms on a 3 MP photo for nothing);
- 1, L, LA, P, PA, RGBA, RGBX, CMYK, YCbCr, LAB, HSV go through Pillow's `convert("RGB")`,
  exactly what the DDA reference does: alpha is dropped, not composited;
- 16-bit and 32-bit integer greyscale (I;16*, I) are scaled from 0..65535 to 0..255
  (Pillow would clip everything above 255 to white);
- float greyscale (F) is scaled from 0..1 when its values lie there, else clipped to 0..255.
The last two deviate from the reference, which would clip; it never saw such files.
"""

from __future__ import annotations

import io
import warnings
from struct import error as struct_error  # Pillow plugins raise it on malformed headers

import numpy as np
from PIL import Image

from worker.errors import DECODE_FAILED, IMAGE_TOO_LARGE, IMAGE_TRUNCATED, UNSUPPORTED_FORMAT, InputError

DEFAULT_MAX_PIXELS = 64_000_000  # a 48 MP phone photo fits; a decompression bomb does not

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def _heif_available() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def sniff_format(data: bytes) -> str:
    """The Pillow format name for `data`, from its leading bytes alone."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brands = data[8:12] + data[16:40]
        if b"avif" in brands or b"avis" in brands:
            return "AVIF"
        if any(b in brands for b in _HEIF_BRANDS):
            if _heif_available():
                return "HEIF"
            raise InputError(UNSUPPORTED_FORMAT, "HEIC/HEIF images need the optional pillow-heif package")
    raise InputError(UNSUPPORTED_FORMAT, f"not a supported image format (leading bytes {data[:12].hex()})")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 for any Pillow mode, by the rules in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode == "I" or mode.startswith("I;16"):
        wide = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
        return _grey_to_rgb(np.rint(wide / 257.0).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return _grey_to_rgb(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    return np.asarray(image.convert("RGB"))


def _is_truncation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or any(k in text for k in ("truncated", "broken data stream", "end of file", "premature"))


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
            return to_rgb(image)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(IMAGE_TOO_LARGE, str(exc)) from exc
    except (OSError, EOFError, SyntaxError, ValueError, MemoryError, IndexError, struct_error) as exc:
        if _is_truncation(exc):
            raise InputError(IMAGE_TRUNCATED, f"{fmt} data ends early: {exc}") from exc
        raise InputError(DECODE_FAILED, f"{fmt} could not be decoded: {exc or type(exc).__name__}") from exc
