from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.imaging.decode import decode_rgb, image_files, sniff_format
from tests.images import SHARED_DATA, encode, photo


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("RGB", "WEBP"),
     ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "TIFF"), ("LAB", "TIFF"), ("RGB", "BMP"), ("RGB", "AVIF")],
)
def test_eight_bit_modes_become_rgb_as_the_reference_converts_them(mode: str, fmt: str) -> None:
    data = encode(photo(64, 48).convert(mode), fmt)
    pixels = decode_rgb(data)
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    with Image.open(io.BytesIO(data)) as again:
        assert np.array_equal(pixels, np.asarray(again.convert("RGB")))


def test_wide_integer_and_float_modes_are_scaled_not_clipped() -> None:
    ramp16 = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    for image in (Image.fromarray(ramp16), Image.fromarray(ramp16.astype(np.int32))):
        pixels = decode_rgb(encode(image, "PNG" if image.mode.startswith("I;16") else "TIFF"))
        assert np.array_equal(pixels[:, :, 0], np.rint(ramp16 / 257.0).astype(np.uint8)), image.mode
        assert np.array_equal(pixels[:, :, 0], pixels[:, :, 2])
    unit = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    pixels = decode_rgb(encode(Image.fromarray(unit), "TIFF"))
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and 120 < pixels[24, 32, 0] < 135


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "unsupported_format"),
        (b"<html><body>hi</body></html>", "unsupported_format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported_format"),
        (bytes(range(256)) * 4, "unsupported_format"),
        (png_header_only(100_000, 100_000), "image_too_large"),
    ],
)
def test_hostile_bytes_get_specific_codes(data: bytes, code: str) -> None:
    with pytest.raises(Exception) as info:
        decode_rgb(data)
    assert getattr(info.value, "code", None) == code, info.value


def test_truncated_jpeg_is_an_error() -> None:
    data = encode(photo(640, 480), "JPEG", quality=90)
    with pytest.raises(Exception) as info:
        decode_rgb(data[: len(data) // 2])
    assert info.value.code == "image_truncated"  # type: ignore[attr-defined]


def test_animation_gives_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_rgb(data)
    assert sniff_format(data) == "GIF" and tuple(pixels[0, 0]) == (255, 0, 0)


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_shared_mode_images_decode() -> None:
    for path in sorted((SHARED_DATA / "pdq" / "misc-images" / "modes").glob("*.*")):
        if path.suffix != ".md":
            assert decode_rgb(path.read_bytes()).ndim == 3, path


NOT_IMAGES = {".txt", ".dat", ".md", ".csv", ""}


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_every_shared_image_decodes_like_the_reference() -> None:
    paths = [p for p in sorted(SHARED_DATA.rglob("*")) if p.is_file() and p.suffix.lower() not in NOT_IMAGES]
    assert len(paths) > 100
    for path in paths:
        pixels = decode_rgb(path.read_bytes())
        with Image.open(path) as ref:
            if ref.mode not in ("I", "F") and not ref.mode.startswith("I;16"):
                assert np.array_equal(pixels, np.asarray(ref.convert("RGB"))), path


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_exif_rotated_photos_keep_their_stored_orientation() -> None:
    for path in sorted((SHARED_DATA / "pdq" / "reg-test-input" / "exif-rotn").glob("*.jpg")):
        with Image.open(path) as raw:
            assert raw.getexif().get(0x0112) in (1, 3, 6, 8)
            stored = raw.size
        pixels = decode_rgb(path.read_bytes())
        assert (pixels.shape[1], pixels.shape[0]) == stored == (4032, 3024), path


def test_a_folders_files_leave_out_hidden_files_and_hidden_folders(tmp_path: Path) -> None:
    for name in ("a.jpg", ".hidden.jpg", ".cache/b.jpg", "sub/c.png", "sub/.git/d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert image_files(tmp_path) == [tmp_path / "a.jpg", tmp_path / "sub" / "c.png"]
    assert image_files(tmp_path / "absent") == []
