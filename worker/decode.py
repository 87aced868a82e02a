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

import functools
import io
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from engine.preprocess import CROP_SIZE, center_crop, plan_center_crop
from worker.errors import (
    DECODE_FAILED,
    IMAGE_TOO_COMPLEX,
    IMAGE_TOO_LARGE,
    IMAGE_TRUNCATED,
    UNSUPPORTED_FORMAT,
    InputError,
)

from worker import _jpeg

DEFAULT_MAX_PIXELS = 64_000_000  # a 48 MP phone photo fits; a decompression bomb does not
# Rows and columns decoded beyond the crop on each side: one 4:2:0 MCU, so chroma upsampling at
# the crop's edges sees the same neighbours as in a full decode.
REGION_MARGIN = 16

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


@functools.lru_cache(maxsize=1)
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


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Pillow image with only its header read, after the format and pixel-count checks."""
    if not data:
        raise InputError(UNSUPPORTED_FORMAT, "empty file")
    fmt = sniff_format(data)
    if fmt == "JPEG":
        check_jpeg_coding(data)
    image = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(IMAGE_TOO_LARGE, f"{width}x{height} is {width * height} pixels, over the cap of {max_pixels}")
    if width == 0 or height == 0:
        raise InputError(DECODE_FAILED, f"image has no pixels ({width}x{height})")
    return image


def as_input_error(exc: BaseException, fmt: str = "image") -> InputError:
    """The one mapping from whatever a decoder raised to the input's error code.

    Decoders are third-party C and Python code fed hostile bytes: any exception they raise is
    about this input, so none may escape the per-input boundary as a crash."""
    if isinstance(exc, InputError):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return InputError(IMAGE_TOO_LARGE, str(exc))
    if isinstance(exc, MemoryError):
        return InputError(IMAGE_TOO_LARGE, f"{fmt} needs more memory to decode than this process may use")
    if _is_truncation(exc):
        return InputError(IMAGE_TRUNCATED, f"{fmt} data ends early: {exc}")
    return InputError(DECODE_FAILED, f"{fmt} could not be decoded: {type(exc).__name__}: {exc}")


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 pixels of the first frame, or InputError with a specific code."""
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = open_checked(data, max_pixels)
            fmt = image.format or fmt
            if fmt == "JPEG":
                return decode_jpeg(data)
            image.load()
            return to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - see as_input_error
        raise as_input_error(exc, fmt) from exc


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
MAX_JPEG_SCANS = 100  # typical progressive files have 6-12; each scan re-reads the coefficient buffer
_JPEG_ERROR_CODES = {"truncated": IMAGE_TRUNCATED, "corrupt": DECODE_FAILED, "too_complex": IMAGE_TOO_COMPLEX,
                     "unsupported": UNSUPPORTED_FORMAT}


class _NoRegion(Exception):
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
    """RGB pixels by worker._jpeg: the whole image (DCT-scaled by 1/scale) or (top, left, height, width).

    CMYK files come back as libjpeg's raw CMYK and are converted the way Pillow converts them
    (Adobe's inverted convention), so pixels stay identical to the reference's."""
    top, left, height, width = region or (0, 0, 0, 0)
    try:
        raw, height, width, channels = _jpeg.decode(data, scale, top, left, height, width, MAX_JPEG_SCANS)
    except _jpeg.Error as exc:
        kind, message = exc.args
        if kind == "no_region":
            raise _NoRegion from None
        raise InputError(_JPEG_ERROR_CODES.get(kind, DECODE_FAILED), f"JPEG: {message}") from None
    if channels == 4:
        return np.asarray(Image.frombuffer("CMYK", (width, height), raw, "raw", "CMYK;I", 0, 1).convert("RGB"))
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def decode_center_crop(data: bytes, size: int = CROP_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The model's [size, size, 3] centre crop, bit-identical to `center_crop(decode_rgb(data))`.

    Single-scan JPEGs at least `size` on both sides colour-convert only the crop plus a margin
    (the rest is entropy-decoded to check its integrity); other files take the full decode."""
    if not data.startswith(b"\xff\xd8\xff"):
        return center_crop(decode_rgb(data, max_pixels), size)
    try:
        image = open_checked(data, max_pixels)
        if image.width >= size and image.height >= size:
            plan = plan_center_crop(image.height, image.width, size)
            top, left = max(plan.top - REGION_MARGIN, 0), max(plan.left - REGION_MARGIN, 0)
            bottom = min(plan.top + size + REGION_MARGIN, image.height)
            right = min(plan.left + size + REGION_MARGIN, image.width)
            try:
                pixels = decode_jpeg(data, region=(top, left, bottom - top, right - left))
            except _NoRegion:
                pass
            else:
                y, x = plan.top - top, plan.left - left
                return pixels[y : y + size, x : x + size].copy()
        return center_crop(decode_jpeg(data), size)
    except Exception as exc:  # noqa: BLE001 - see as_input_error
        raise as_input_error(exc, "JPEG") from exc


def image_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted; none when the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def decode_folder(folder: Path, on_skip: Callable[[Path, InputError], None] = lambda _p, _e: None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, pixels) for every decodable file under `folder`; the others go to `on_skip`."""
    for path in image_files(folder):
        try:
            yield path, decode_rgb(path.read_bytes(), max_pixels)
        except InputError as exc:
            on_skip(path, exc)
