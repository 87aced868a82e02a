"""Untrusted bytes to RGB pixels, with Pillow restricted to an allow-list of formats.

The format is sniffed from magic bytes and only that decoder is offered to Pillow; the
pixel count and the decode's modelled peak memory are checked from the header before any
pixel is decoded (`check_decode_cost`); only the first frame
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.imaging import jpeg
from engine.imaging.budget import BAND_PIXELS, check_decode_cost, check_pixel_count, check_webp_canvas, row_bytes
from engine.imaging.errors import (
    DECODE_FAILED,
    DECODE_LIMIT,
    IMAGE_TOO_LARGE,
    IMAGE_TRUNCATED,
    UNSUPPORTED_FORMAT,
    InputError,
)
from engine.imaging.png_chunks import TEXT_CHUNKS, Unfinished, png_chunks
from engine.imaging.preprocess import CROP_SIZE, center_crop, plan_center_crop

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




def _bands(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, values) for bands of ~BAND_PIXELS, cut from Pillow's storage without a full copy."""
    rows = max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, rows):
        yield top, np.asarray(image.crop((0, top, image.width, min(top + rows, image.height))))


def _wide_grey_to_rgb(image: Image.Image) -> np.ndarray:
    """16/32-bit integer or float greyscale to RGB by the module docstring's rules, band by band."""
    out = np.empty((image.height, image.width, 3), np.uint8)
    if image.mode == "F":
        lo, hi = np.inf, -np.inf
        for _, band in _bands(image):
            finite = np.nan_to_num(band.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        gain = 255.0 if 0.0 <= lo and hi <= 1.0 else 1.0
    for top, band in _bands(image):
        if image.mode == "F":
            values = np.nan_to_num(band.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0) * gain
            grey = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
        else:
            grey = np.rint(np.clip(band.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
        out[top : top + len(grey)] = grey[:, :, None]
    return out


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 for any Pillow mode, by the rules in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _wide_grey_to_rgb(image)
    return np.asarray(image.convert("RGB"))


def _is_truncation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or any(k in text for k in ("truncated", "broken data stream", "end of file", "premature"))


def without_text_chunks(png: bytes) -> bytes:
    """The PNG without its text chunks: they hold no pixels, and Pillow refuses a whole image
    for a text chunk it finds too large (compression bombs are metadata's problem, see
    `worker.provenance`, never the verdict's). Unchanged if it has none or its chunks do not parse."""
    kept, dropped = [png[:8]], False
    try:
        for kind, start, end in png_chunks(png):
            if kind in TEXT_CHUNKS:
                dropped = True
            else:
                kept.append(png[start:end])
    except Unfinished:
        return png  # Pillow reports what is wrong with it
    return b"".join(kept) if dropped else png


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Pillow image with only its header read, after the format, pixel-count and memory checks."""
    if not data:
        raise InputError(UNSUPPORTED_FORMAT, "empty file")
    fmt = sniff_format(data)
    if fmt == "JPEG":
        jpeg.check_jpeg_coding(data)
    if fmt == "WEBP":  # libwebp allocates its canvases when the file is opened: check before
        check_webp_canvas(data, max_pixels)
    image = Image.open(io.BytesIO(data if fmt != "PNG" else without_text_chunks(data)), formats=[fmt])
    width, height = image.size
    check_pixel_count(width, height, max_pixels)
    check_decode_cost(image, max_pixels)
    # Pillow feeds raw decoders (BMP, uncompressed TIFF) blocks of 64 KB and joins what is left of
    # a row to each new block: a row of megabytes cost quadratic copying (18 s for 1 x 64 MP).
    image.decodermaxblock = max(image.decodermaxblock, row_bytes(width, image.mode))
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
        return InputError(DECODE_LIMIT, f"{fmt} needed more memory to decode than a decode process may use")
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
                return jpeg.decode_jpeg(data)
            image.load()
            return to_rgb(image)
    except Exception as exc:  # see as_input_error
        raise as_input_error(exc, fmt) from exc


@dataclass(frozen=True)
class CropDecode:
    """The model's centre crop and what decoding it produced on the way."""

    crop: np.ndarray  # [size, size, 3] uint8
    whole: np.ndarray | None  # the whole image, when the crop needed a full decode (None: region decode)
    height: int
    width: int
    luma: np.ndarray | None = None  # a region decode's tapped luminance (1/8 or 1/4 scale), when asked for


def decode_crop(data: bytes, size: int = CROP_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                luma_per_block: Callable[[int, int], int] | None = None) -> CropDecode:
    """The centre crop, bit-identical to `center_crop(decode_rgb(data))`, in one decode of the file.

    Single-scan JPEGs at least `size` on both sides colour-convert only the crop plus a margin
    and entropy-decode the rest (integrity); with `luma_per_block`, a function of (height,
    width), that pass also returns the luminance at 1/8 (1) or 1/4 (2) scale for hashing, and 0
    asks for a whole decode instead (a small image: one decode serves crop and hash). Other files
    take the whole decode, which is returned so that nothing decodes them twice."""
    if not data.startswith(b"\xff\xd8\xff"):
        whole = decode_rgb(data, max_pixels)
        return CropDecode(center_crop(whole, size), whole, whole.shape[0], whole.shape[1])
    try:
        image = open_checked(data, max_pixels)
        per = luma_per_block(image.height, image.width) if luma_per_block else 0
        if image.width >= size and image.height >= size and (luma_per_block is None or per):
            plan = plan_center_crop(image.height, image.width, size)
            top, left = max(plan.top - REGION_MARGIN, 0), max(plan.left - REGION_MARGIN, 0)
            bottom = min(plan.top + size + REGION_MARGIN, image.height)
            right = min(plan.left + size + REGION_MARGIN, image.width)
            try:
                pixels, luma = jpeg.decode_jpeg_tapped(data, region=(top, left, bottom - top, right - left), luma_per_block=per)
            except jpeg.NoRegion:
                pass
            else:
                y, x = plan.top - top, plan.left - left
                return CropDecode(pixels[y : y + size, x : x + size].copy(), None, image.height, image.width, luma)
        whole = jpeg.decode_jpeg(data)
        return CropDecode(center_crop(whole, size), whole, whole.shape[0], whole.shape[1])
    except Exception as exc:  # see as_input_error
        raise as_input_error(exc, "JPEG") from exc


def decode_center_crop(data: bytes, size: int = CROP_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The model's [size, size, 3] centre crop (see `decode_crop`), the whole file checked."""
    return decode_crop(data, size, max_pixels).crop


def image_files(folder: Path) -> list[Path]:
    """Every file under `folder` that is not hidden nor in a hidden folder (`.git`, editors'
    caches), sorted; none when the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def decode_folder(folder: Path, on_skip: Callable[[Path, InputError], None] = lambda _p, _e: None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, pixels) for every decodable file under `folder`; the others go to `on_skip`."""
    for path in image_files(folder):
        try:
            yield path, decode_rgb(path.read_bytes(), max_pixels)
        except InputError as exc:
            on_skip(path, exc)
