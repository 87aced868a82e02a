"""engine.imaging._jpeg must give exactly Pillow's pixels (the reference's decoder), whole, scaled or cropped,
and refuse what Pillow would silently turn grey."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import engine.imaging.decode as decode
from engine.imaging import jpeg
from engine.imaging.preprocess import center_crop
from tests.hostile_files import cut_with_end_marker, jpeg_declaring, progressive_jpeg_with_scans, relabel_frame
from tests.images import SHARED_DATA, encode, photo
from worker.cache.hashing import hamming, jpeg_luma_per_block, pdq_from_pixels
from worker.decode.prepare import Prepared, prepare
from worker.errors import InputError


def pillow_rgb(data: bytes) -> np.ndarray:
    """The reference's decode: Pillow, then convert("RGB")."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def reference_crop(data: bytes) -> np.ndarray:
    return center_crop(pillow_rgb(data))


def prepared(data: bytes) -> Prepared:
    """prepare() as the decode processes run it (one decode for crop, integrity and hash), its error raised."""
    result = prepare(data, 224, 1, 64_000_000)
    if result.error is not None:
        raise InputError(*result.error)
    return result


@pytest.fixture()
def region_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Records each successful region decode (instrumentation, not a fake)."""
    calls: list[tuple[int, ...]] = []
    real = jpeg.decode_jpeg_tapped  # instrumenting the JPEG decodes, region and whole

    def counting(data: bytes, scale: int = 1, region: tuple[int, int, int, int] | None = None,
                 luma_per_block: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        out = real(data, scale, region, luma_per_block)
        if region is not None:
            calls.append(region)
        return out

    monkeypatch.setattr(jpeg, "decode_jpeg_tapped", counting)
    return calls


@pytest.mark.parametrize(
    ("size", "subsampling", "mode"),
    [
        ((1601, 1203), 2, "RGB"),  # 4:2:0, odd (W-336) and (H-336)
        ((1600, 1000), 1, "RGB"),  # 4:2:2
        ((999, 777), 0, "RGB"),  # 4:4:4
        ((800, 600), 2, "L"),  # greyscale
        ((336, 336), 2, "RGB"),  # the crop is the whole image: no margin possible
        ((340, 2000), 2, "RGB"),  # margin clipped at the left and right edges
        ((2000, 345), 2, "RGB"),
    ],
)
def test_region_decode_is_bit_identical(size: tuple[int, int], subsampling: int, mode: str, region_calls: list) -> None:
    data = encode(photo(*size, seed=size[0]).convert(mode), "JPEG", quality=90, subsampling=subsampling)
    assert np.array_equal(decode.decode_center_crop(data), reference_crop(data))
    assert len(region_calls) == 1


def test_restart_markers_are_handled(region_calls: list) -> None:
    image = photo(1200, 900, seed=8)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85, restart_marker_blocks=4)
    data = buf.getvalue()
    assert b"\xff\xdd" in data  # DRI present
    assert np.array_equal(decode.decode_center_crop(data), reference_crop(data))
    assert len(region_calls) == 1
    assert Image.open(io.BytesIO(data)).mode == "RGB"


@pytest.mark.parametrize(
    "data",
    [
        encode(photo(900, 700, seed=1), "JPEG", quality=90, progressive=True),
        encode(photo(900, 700, seed=2).convert("CMYK"), "JPEG", quality=90),
        encode(photo(200, 500, seed=3), "JPEG", quality=90),  # narrower than the crop: padding
    ],
    ids=["progressive", "cmyk", "small"],
)
def test_unhandled_jpegs_fall_back_to_the_full_decode(data: bytes, region_calls: list) -> None:
    assert np.array_equal(decode.decode_center_crop(data), reference_crop(data))
    assert np.array_equal(decode.decode_rgb(data), pillow_rgb(data))
    assert region_calls == []


def test_truncated_and_corrupt_jpegs_keep_their_error_codes() -> None:
    data = encode(photo(1600, 1200, seed=4), "JPEG", quality=90)
    for cut in (len(data) // 3, len(data) * 2 // 3):
        with pytest.raises(InputError) as info:
            decode.decode_center_crop(data[:cut])
        assert info.value.code == "image_truncated"
    with pytest.raises(InputError) as info:
        decode.decode_center_crop(b"\xff\xd8\xff" + b"\x00" * 100 + b"\xff\xd9")
    assert info.value.code in ("decode_failed", "image_truncated")


def test_truncated_file_whose_centre_survives_is_still_an_error(region_calls: list) -> None:
    """The crop is decoded, the tail is missing: refused all the same, as the full decode refuses it."""
    data = encode(photo(1600, 1200, seed=5), "JPEG", quality=90)
    with pytest.raises(InputError) as info:
        decode.decode_center_crop(data[: len(data) * 9 // 10])
    assert info.value.code == "image_truncated" and region_calls == []


def corrupt_entropy_data(data: bytes) -> bytes:
    """2 KB of the scan replaced with stuffed FF bytes: runs of 1-bits, never a valid Huffman code."""
    start = data.index(b"\xff\xda") + 400
    return data[:start] + b"\xff\x00" * 1000 + data[start + 2000 :]


def restart_markers_out_of_order(_data: bytes) -> bytes:
    """Restart markers must count RST0..RST7 in turn; one that skips ahead is corrupt data."""
    buf = io.BytesIO()
    photo(1600, 1200, seed=9).save(buf, "JPEG", quality=90, restart_marker_blocks=8)
    data = bytearray(buf.getvalue())
    first = data.index(b"\xff\xd0", data.index(b"\xff\xda"))
    data[first + 1] = 0xD5
    return bytes(data)


TRUNCATIONS = [
    ("half", lambda d: cut_with_end_marker(d, 0.5)),
    ("tail", lambda d: cut_with_end_marker(d, 0.95)),  # centre intact, tail missing
    ("head", lambda d: cut_with_end_marker(d, 0.05)),  # cut before the centre
    ("no-scan-8000", lambda _d: jpeg_declaring(8000, 8000)),
    ("no-scan-small", lambda _d: jpeg_declaring(640, 480)),
]
DAMAGE = [(name, make, "image_truncated", progressive) for name, make in TRUNCATIONS for progressive in (False, True)] + [
    # libjpeg-turbo reports a bad Huffman code in progressive scans; its fast sequential path decodes one as zero
    ("bad-codes", corrupt_entropy_data, "decode_failed", True),
    ("bad-restart", restart_markers_out_of_order, "decode_failed", False),
]


@pytest.mark.parametrize(("make", "code", "progressive"), [d[1:] for d in DAMAGE],
                         ids=[f"{d[0]}-{'progressive' if d[3] else 'sequential'}" for d in DAMAGE])
def test_missing_or_corrupt_data_is_an_error_on_every_path(make, code: str, progressive: bool) -> None:
    """Pillow returns these as grey images; every path here (crop, full, PDQ) refuses them alike."""
    data = make(encode(photo(1600, 1200, seed=9), "JPEG", quality=90, progressive=progressive))
    assert pillow_rgb(data).shape[2] == 3  # Pillow: no error at all
    for path in (decode.decode_center_crop, decode.decode_rgb, prepared):
        with pytest.raises(InputError) as info:
            path(data)
        assert info.value.code == code, (path.__name__, info.value.message)


@pytest.mark.parametrize(
    ("marker", "precision", "what"),
    [(0xC9, 8, "arithmetic-coded"), (0xCA, 8, "arithmetic-coded progressive"), (0xC3, 8, "lossless"),
     (0xC5, 8, "hierarchical"), (0xC1, 12, "12-bit"), (0xC0, 16, "16-bit")],
)
def test_codings_outside_8_bit_huffman_are_refused_alike_on_every_path(marker: int, precision: int, what: str) -> None:
    data = relabel_frame(encode(photo(900, 700, seed=3), "JPEG", quality=90), marker, precision)
    for path in (decode.decode_center_crop, decode.decode_rgb, prepared):
        with pytest.raises(InputError) as info:
            path(data)
        assert info.value.code == "unsupported_format" and what in info.value.message


def test_too_many_scans_are_refused_before_they_cost_time() -> None:
    assert decode.decode_rgb(progressive_jpeg_with_scans(400, 300, 10)).shape == (300, 400, 3)
    with pytest.raises(InputError) as info:
        decode.decode_rgb(progressive_jpeg_with_scans(400, 300, jpeg.MAX_JPEG_SCANS + 5))
    assert info.value.code == "image_too_complex"


@pytest.mark.parametrize(("size", "subsampling", "mode"), [((2400, 1800), 2, "RGB"), ((1600, 1000), 1, "RGB"),
                                                        ((999, 950), 0, "RGB"), ((1200, 1000), 2, "L")])
def test_the_tapped_luminance_is_libjpegs_own_scaled_luminance(size: tuple[int, int], subsampling: int, mode: str) -> None:
    """One sample per block is libjpeg's 1/8-scale Y exactly; four are the exact quadrant means,
    within one level of libjpeg's own 1/4-scale IDCT (which is not an exact mean)."""
    data = encode(photo(*size, seed=size[0]).convert(mode), "JPEG", quality=90, subsampling=subsampling)
    for per, tolerance in ((1, 0), (2, 1)):
        crop, luma = jpeg.decode_jpeg_tapped(data, region=(100, 100, 336, 336), luma_per_block=per)
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (image.width * per // 8, image.height * per // 8))
            expected = np.asarray(image.convert("L"))
        assert luma is not None and luma.shape == expected.shape
        assert np.abs(luma.astype(int) - expected.astype(int)).max() <= tolerance, per
        assert np.array_equal(crop[16:-16, 16:-16], pillow_rgb(data)[116:420, 116:420])  # away from the region's edges


def test_prepare_decodes_each_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """PNG, progressive and small JPEGs: one whole decode serves crop and hash. A larger
    single-scan JPEG: one region decode that checks the whole file and taps its luminance."""
    decodes: list[str] = []
    real_rgb, real_jpeg = decode.decode_rgb, jpeg.decode_jpeg_tapped

    def rgb(data: bytes, max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> np.ndarray:
        out = real_rgb(data, max_pixels)
        decodes.append("rgb")
        return out

    def whole_or_region(data: bytes, scale: int = 1, region: tuple[int, int, int, int] | None = None,
                        luma_per_block: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        out = real_jpeg(data, scale, region, luma_per_block)  # a refused region (progressive) decodes nothing
        decodes.append(("region" + (f" + luma {luma_per_block}/8" if luma_per_block else "")) if region else f"whole 1/{scale}")
        return out

    monkeypatch.setattr(decode, "decode_rgb", rgb)
    monkeypatch.setattr(jpeg, "decode_jpeg_tapped", whole_or_region)
    base, small = photo(1600, 1200, seed=3), photo(800, 600, seed=4)
    for data, expected in [(encode(base, "PNG"), ["rgb"]),
                           (encode(base, "JPEG", quality=90, progressive=True), ["whole 1/1"]),
                           (encode(small, "JPEG", quality=90), ["whole 1/1"]),
                           (encode(base, "JPEG", quality=90), ["region + luma 1/8"])]:
        decodes.clear()
        result = prepare(data, 336, 1, 64_000_000)
        assert result.error is None and result.pdq is not None and decodes == expected
        assert np.array_equal(result.crops[0], reference_crop(data))  # type: ignore[index]
    decodes.clear()
    assert prepare(encode(base, "JPEG", quality=90), 336, 1, 64_000_000, hash_pdq=False).pdq is None
    assert decodes == ["region"]
    assert [jpeg_luma_per_block(*hw) for hw in ((600, 800), (950, 1500), (960, 1280), (899, 4000))] == [0, 2, 1, 0]


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_prepare_pdq_stays_within_20_bits_of_the_full_decode_on_every_shared_jpeg() -> None:
    """The bound the README documents (hashes published to other systems must stay comparable)."""
    distances = []
    for path in sorted(SHARED_DATA.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg"):
            data = path.read_bytes()
            distances.append(hamming(str(prepare(data, 224, 1, 64_000_000).pdq), pdq_from_pixels(decode.decode_rgb(data))[0]))
    assert len(distances) >= 40 and max(distances) <= 20, max(distances)


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_every_shared_jpeg_is_bit_identical(region_calls: list) -> None:
    jpegs = [p for p in sorted(SHARED_DATA.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg")]
    for path in jpegs:
        data = path.read_bytes()
        assert np.array_equal(decode.decode_center_crop(data), reference_crop(data)), path
    assert len(region_calls) >= len(jpegs) // 2  # most of them really took the region path


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_pdq_matches_meta_reference_hashes() -> None:
    dih = SHARED_DATA / "pdq" / "reg-test-input" / "dih"
    bridge1, q1 = pdq_from_pixels(decode.decode_rgb((dih / "bridge-1-original.jpg").read_bytes()))
    bridge2, _ = pdq_from_pixels(decode.decode_rgb((dih / "bridge-2-rotate-90.jpg").read_bytes()))
    assert bridge1 == "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22" and q1 == 100
    assert bridge2 == "30a10efd71cc3d429013d48d0ffffc52e34e0e17ada952a9d29685211ea9e5af"
    assert hamming(bridge1, bridge2) == 120
    _, q_small = pdq_from_pixels(decode.decode_rgb((SHARED_DATA / "pdq" / "misc-images" / "small.jpg").read_bytes()))
    assert q_small == 0


def test_tapped_pdq_stays_within_match_radius_of_the_full_decode() -> None:
    from PIL import ImageDraw

    image = photo(4000, 3000, seed=6)  # structure, not just noise: noise alone has PDQ quality ~5
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.ellipse((300 * i, 200 * i % 2500, 300 * i + 900, 200 * i % 2500 + 700), fill=(20 * i, 255 - 20 * i, 120))
    data = encode(image, "JPEG", quality=92)
    full, q_full = pdq_from_pixels(decode.decode_rgb(data))
    result = prepare(data, 336, 1, 64_000_000)
    draft, q_draft = str(result.pdq), int(result.pdq_quality or 0)
    assert min(q_full, q_draft) >= 50
    assert hamming(full, draft) <= 31
