"""What a decode may cost, decided from the header before any pixel is decoded: the pixel cap, and
the peak memory of each decoder modelled stage by stage (`benchmarks/hostile_inputs.py` measures
the constants), with CPU traps refused outright (shared TIFF blobs, Python-speed RLE BMPs)."""

from __future__ import annotations

from PIL import Image, TiffImagePlugin

from engine.imaging.errors import DECODE_FAILED, IMAGE_TOO_COMPLEX, IMAGE_TOO_LARGE, InputError

BAND_PIXELS = 1 << 20  # wide modes are converted a band of rows at a time: temporaries stay ~10 MB


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


def row_bytes(width: int, mode: str) -> int:
    """One row in Pillow's storage: also what a raw decoder is handed per read (`open_checked`)."""
    return width * _STORAGE_BYTES.get(mode, 4)


def _pillow_image_bytes(width: int, height: int, mode: str) -> int:
    return height * (row_bytes(width, mode) + ROW_POINTER_BYTES)


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
    need += 2 * row_bytes(width, mode)  # a raw decoder's row: the block read and its join
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
