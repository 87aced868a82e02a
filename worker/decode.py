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
from struct import error as struct_error  # Pillow plugins raise it on malformed headers
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from engine.preprocess import CROP_SIZE, center_crop, plan_center_crop
from worker.errors import DECODE_FAILED, IMAGE_TOO_LARGE, IMAGE_TRUNCATED, UNSUPPORTED_FORMAT, InputError

try:
    from worker._jpegregion import decode_region
except ImportError:  # built without libjpeg headers: every JPEG takes the full decode
    decode_region = None

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


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Pillow image with only its header read, after the format and pixel-count checks."""
    if not data:
        raise InputError(UNSUPPORTED_FORMAT, "empty file")
    fmt = sniff_format(data)
    image = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(IMAGE_TOO_LARGE, f"{width}x{height} is {width * height} pixels, over the cap of {max_pixels}")
    if width == 0 or height == 0:
        raise InputError(DECODE_FAILED, f"image has no pixels ({width}x{height})")
    return image


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 pixels of the first frame, or InputError with a specific code."""
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open_checked(data, max_pixels)
            fmt = image.format or fmt
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


def jpeg_scan_is_complete(data: bytes) -> bool:
    """True when an EOI marker follows the first scan's header.

    A region decode never reads the file's tail, so it would not notice a truncation that
    the full decode reports. Marker segments are walked rather than searched, because an EXIF
    thumbnail carries its own EOI; inside entropy-coded data, byte stuffing means FF D9 can
    only be the real EOI. Bytes after it (camera trailers) are fine.
    """
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:  # start of scan
            return data.rfind(b"\xff\xd9") > i  # searched from the end, where the EOI is
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def decode_center_crop(data: bytes, size: int = CROP_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The model's [size, size, 3] centre crop, bit-identical to `center_crop(decode_rgb(data))`.

    Baseline JPEGs at least `size` on both sides decode only the crop plus a margin; any
    file the region decoder declines (progressive, CMYK, corrupt, truncated) takes the full
    decode, which also produces the specific error codes.
    """
    if decode_region is not None and data[:3] == b"\xff\xd8\xff" and jpeg_scan_is_complete(data):
        try:
            image = _open_checked(data, max_pixels)
        except (InputError, OSError, SyntaxError, ValueError, struct_error):
            image = None  # let the full decode report it
        if image is not None and image.width >= size and image.height >= size and image.mode in ("RGB", "L"):
            plan = plan_center_crop(image.height, image.width, size)
            top, left = max(plan.top - REGION_MARGIN, 0), max(plan.left - REGION_MARGIN, 0)
            bottom = min(plan.top + size + REGION_MARGIN, image.height)
            right = min(plan.left + size + REGION_MARGIN, image.width)
            try:
                region = decode_region(data, top, left, bottom - top, right - left)
            except ValueError:
                pass
            else:
                pixels = np.frombuffer(region, np.uint8).reshape(bottom - top, right - left, 3)
                y, x = plan.top - top, plan.left - left
                return pixels[y : y + size, x : x + size].copy()
    return center_crop(decode_rgb(data, max_pixels), size)


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
