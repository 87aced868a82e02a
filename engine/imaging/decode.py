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
from PIL import Image, TiffImagePlugin

from engine.imaging import _jpeg
from engine.imaging.errors import (
    DECODE_FAILED,
    DECODE_LIMIT,
    IMAGE_TOO_COMPLEX,
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


BAND_PIXELS = 1 << 20  # wide modes are converted a band of rows at a time: temporaries stay ~10 MB


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
        check_jpeg_coding(data)
    if fmt == "WEBP":  # libwebp allocates its canvases when the file is opened: check before
        check_webp_canvas(data, max_pixels)
    image = Image.open(io.BytesIO(data if fmt != "PNG" else without_text_chunks(data)), formats=[fmt])
    width, height = image.size
    check_pixel_count(width, height, max_pixels)
    check_decode_cost(image, max_pixels)
    # Pillow feeds raw decoders (BMP, uncompressed TIFF) blocks of 64 KB and joins what is left of
    # a row to each new block: a row of megabytes cost quadratic copying (18 s for 1 x 64 MP).
    image.decodermaxblock = max(image.decodermaxblock, _row_bytes(width, image.mode))
    return image


def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InputError(IMAGE_TOO_LARGE, f"{width}x{height} is {width * height} pixels, over the cap of {max_pixels}")
    if width == 0 or height == 0:
        raise InputError(DECODE_FAILED, f"image has no pixels ({width}x{height})")


# Peak memory of a decode, modelled stage by stage in bytes; the constants are measured
# (`benchmarks/hostile_inputs.py`). Pillow keeps an image as rows of 1, 2 or 4 bytes a pixel
# and a table of 8-byte row pointers; `to_rgb` converts into a second image (4 bytes a pixel)
# unless the mode is RGB, and numpy's copy of an RGB image passes through a joined bytes copy
# (6 bytes a pixel). So the largest ordinary image, 8-bit RGB at the pixel cap, peaks at
# 4 + 6 = 10 bytes a pixel (measured: 10.0), and every file is held to PEAK_BYTES_PER_CAP_PIXEL
# of the cap's pixels: under twice that (the bound promised), with a margin for what the
# model leaves out (every peak measured by benchmarks/hostile_inputs.py is below its estimate
# or within 1% above it).
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # everything else: 4
ROW_POINTER_BYTES = 8
TO_ARRAY_BYTES = 6  # per pixel: an RGB image's bytes as Pillow hands them to numpy, and the join of its chunks
WEBP_CANVAS_BYTES = 8  # per canvas pixel: libwebp's RGBA canvas and Pillow's copy of the frame
WEBP_ANIMATION_BYTES = 4  # per canvas pixel: an animation's second canvas (the previous frame, disposed)
# Per pixel: libavif's (libheif's) YUV planes, 1.5 to 4 bytes at 8 bits, and the RGBA frame Pillow
# copies, 4 (measured: 64 MP RGB 4:2:0 +746 MB, RGBA 4:4:4 +1,174 MB). 10- and 12-bit files take
# 2 to 4 bytes more than modelled; near the cap those rest on the decode process's kernel limit.
AV1_DECODER_BYTES = {"AVIF": 6, "HEIF": 6}
PEAK_BYTES_PER_CAP_PIXEL = 19


def _row_bytes(width: int, mode: str) -> int:
    """One row in Pillow's storage: also what a raw decoder is handed per read (`open_checked`)."""
    return width * _STORAGE_BYTES.get(mode, 4)


def _pillow_image_bytes(width: int, height: int, mode: str) -> int:
    return height * (_row_bytes(width, mode) + ROW_POINTER_BYTES)


def _conversion_bytes(width: int, height: int, mode: str) -> int:
    """What `to_rgb` adds on top of the decoded image: a converted copy and numpy's array."""
    pixels = width * height
    if mode == "RGB":
        return pixels * TO_ARRAY_BYTES
    if mode in ("I", "F") or mode.startswith("I;16"):
        return pixels * 3 + BAND_PIXELS * 16  # the array, written a band at a time
    return _pillow_image_bytes(width, height, "RGB") + pixels * TO_ARRAY_BYTES


def peak_budget(max_pixels: int) -> int:
    return max_pixels * PEAK_BYTES_PER_CAP_PIXEL


def _refuse_over_budget(what: str, need: int, max_pixels: int) -> None:
    if need > peak_budget(max_pixels):
        raise InputError(IMAGE_TOO_LARGE, f"{what} needs about {need >> 20} MB to decode, over the "
                                          f"{peak_budget(max_pixels) >> 20} MB the pixel cap allows")


def webp_canvas(data: bytes) -> tuple[int, int, bool, bool]:
    """(width, height, animated, alpha) from a WebP's first chunk header, before libwebp sees it."""
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        flags = data[20]
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1,
                bool(flags & 0x02), bool(flags & 0x10))
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False, bool(bits >> 28 & 1)
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF, False, False
    raise InputError(DECODE_FAILED, "WebP without a readable canvas size in its first chunk")


def check_webp_canvas(data: bytes, max_pixels: int) -> None:
    """A WebP's cost from its header: libwebp decodes into canvases of its own before Pillow's
    image exists, two for an animation however small its frames."""
    width, height, animated, alpha = webp_canvas(data)
    check_pixel_count(width, height, max_pixels)
    mode = "RGBA" if alpha or animated else "RGB"
    need = (width * height * (WEBP_CANVAS_BYTES + (WEBP_ANIMATION_BYTES if animated else 0))
            + _pillow_image_bytes(width, height, mode) + _conversion_bytes(width, height, mode))
    _refuse_over_budget(f"{'animated ' if animated else ''}WebP {width}x{height}", need, max_pixels)


_TIFF_BITS, _TIFF_SAMPLES, _TIFF_ROWS_PER_STRIP, _TIFF_STRIP_OFFSETS = 258, 277, 278, 273
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH, _TIFF_TILE_OFFSETS = 322, 323, 324
_BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4
# Pillow decodes RLE BMPs in Python, pixel by pixel at line ends: ~0.35 us a pixel here.
MAX_RLE_BMP_PIXELS = 4_000_000


def check_decode_cost(image: Image.Image, max_pixels: int) -> None:
    """Refuse, from the header alone, files whose decode costs more than the pixel cap implies.

    Memory: the model above (image, row pointers, conversion) plus a decoder buffer where one
    is known (a TIFF strip or tile, a raw decoder's row), at most `peak_budget`. So extreme
    shapes (a row pointer per pixel of a 1-pixel-wide image), wide modes, tiles much larger
    than the image and strips of millions of rows are refused before they cost it. CPU: tiles
    that share one compressed blob, and run-length coding that Pillow expands in Python."""
    width, height = image.size
    mode = image.mode
    need = _pillow_image_bytes(width, height, mode) + _conversion_bytes(width, height, mode)
    need += 2 * _row_bytes(width, mode)  # a raw decoder's row: the block read and its join
    need += width * height * AV1_DECODER_BYTES.get(image.format or "", 0)
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        tags = image.tag_v2
        bits = tags.get(_TIFF_BITS, 8)
        sample_bytes = -(-max(bits if isinstance(bits, int) else max(bits, default=8), 1) // 8)
        pixel_bytes = sample_bytes * int(tags.get(_TIFF_SAMPLES, 1) or 1)
        tile_w, tile_h = int(tags.get(_TIFF_TILE_WIDTH, 0) or 0), int(tags.get(_TIFF_TILE_LENGTH, 0) or 0)
        if tile_w and tile_h:
            padded = -(-width // tile_w) * tile_w * -(-height // tile_h) * tile_h
            if padded > max_pixels and padded > 2 * width * height:  # edge tiles of a legal image may pass the cap
                raise InputError(IMAGE_TOO_LARGE, f"TIFF tiles of {tile_w}x{tile_h} pad a {width}x{height} image to "
                                                  f"{padded} pixels, over the cap of {max_pixels}")
            need += tile_w * tile_h * pixel_bytes
        else:
            need += width * min(int(tags.get(_TIFF_ROWS_PER_STRIP, height) or height), height) * pixel_bytes
        offsets = [o for o in (tags.get(_TIFF_TILE_OFFSETS) or tags.get(_TIFF_STRIP_OFFSETS) or ()) if o]
        if len(set(offsets)) < len(offsets):
            raise InputError(IMAGE_TOO_COMPLEX, "TIFF tiles or strips share compressed data (each would be decoded again)")
    if image.format == "BMP" and image.info.get("compression") in _BMP_RLE and width * height > MAX_RLE_BMP_PIXELS:
        raise InputError(IMAGE_TOO_COMPLEX, f"run-length coded BMP of {width * height} pixels (limit {MAX_RLE_BMP_PIXELS}: "
                                            "its decoder is slow per pixel)")
    _refuse_over_budget(f"{image.format} {mode} {width}x{height}", need, max_pixels)


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
                return decode_jpeg(data)
            image.load()
            return to_rgb(image)
    except Exception as exc:  # see as_input_error
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
MAX_JPEG_SCANS = 64  # typical progressive files have 6-12; each scan re-reads the coefficient buffer (~60 ms at 64 MP)
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
    """RGB pixels by engine.imaging._jpeg: the whole image (DCT-scaled by 1/scale) or (top, left, height, width).

    A region decode entropy-decodes the rows below it too: a file cut short or corrupt after the
    region is refused as a whole decode refuses it.

    CMYK files come back as libjpeg's raw CMYK and are converted the way Pillow converts them
    (Adobe's inverted convention), so pixels stay identical to the reference's."""
    return _decode_jpeg(data, scale, region)[0]


def _decode_jpeg(data: bytes, scale: int = 1, region: tuple[int, int, int, int] | None = None,
                 luma_per_block: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """`decode_jpeg`, and with `luma_per_block` (1 or 2, region decodes only) the image's luminance
    at 1/8 or 1/4 scale from the same pass (None if the decoder could not tap it)."""
    top, left, height, width = region or (0, 0, 0, 0)
    try:
        raw, height, width, channels, luma = _jpeg.decode(data, scale, top, left, height, width, MAX_JPEG_SCANS, luma_per_block)
    except _jpeg.Error as exc:
        kind, message = exc.args
        if kind == "no_region":
            raise _NoRegion from None
        raise InputError(_JPEG_ERROR_CODES.get(kind, DECODE_FAILED), f"JPEG: {message}") from None
    plane = np.frombuffer(luma[0], np.uint8).reshape(luma[1], luma[2]) if luma is not None else None
    if channels == 4:
        return np.asarray(Image.frombuffer("CMYK", (width, height), raw, "raw", "CMYK;I", 0, 1).convert("RGB")), plane
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3), plane


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
                pixels, luma = _decode_jpeg(data, region=(top, left, bottom - top, right - left), luma_per_block=per)
            except _NoRegion:
                pass
            else:
                y, x = plan.top - top, plan.left - left
                return CropDecode(pixels[y : y + size, x : x + size].copy(), None, image.height, image.width, luma)
        whole = decode_jpeg(data)
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
