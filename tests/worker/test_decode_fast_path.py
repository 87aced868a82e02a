"""The region decoder must give exactly the pixels of a full decode + the reference crop."""

from __future__ import annotations

import os

import numpy as np
import pytest

import worker.decode as decode
from engine.preprocess import center_crop
from tests.conftest import SHARED_DATA, encode, photo
from worker.errors import InputError
from worker.hashing import hamming, pdq_from_pixels, pdq_pixels

if decode.decode_region is None and os.environ.get("DDA_REQUIRE_NATIVE"):
    raise RuntimeError("worker._jpegregion was not built (libjpeg headers missing when installing?)")
pytestmark = pytest.mark.skipif(decode.decode_region is None, reason="worker._jpegregion not built")


@pytest.fixture()
def region_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Records each successful use of the region decoder (instrumentation, not a fake)."""
    calls: list[tuple[int, ...]] = []
    real = decode.decode_region

    def counting(data: bytes, *box: int) -> bytes:
        out = real(data, *box)
        calls.append(box)
        return out

    monkeypatch.setattr(decode, "decode_region", counting)
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
    assert np.array_equal(decode.decode_center_crop(data), center_crop(decode.decode_rgb(data)))
    assert len(region_calls) == 1


def test_restart_markers_are_handled(region_calls: list) -> None:
    from PIL import Image

    image = photo(1200, 900, seed=8)
    import io

    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85, restart_marker_blocks=4)
    data = buf.getvalue()
    assert b"\xff\xdd" in data  # DRI present
    assert np.array_equal(decode.decode_center_crop(data), center_crop(decode.decode_rgb(data)))
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
    assert np.array_equal(decode.decode_center_crop(data), center_crop(decode.decode_rgb(data)))
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
    """The region decoder would never reach the missing tail; the file is refused all the same."""
    data = encode(photo(1600, 1200, seed=5), "JPEG", quality=90)
    with pytest.raises(InputError) as info:
        decode.decode_center_crop(data[: len(data) * 9 // 10])
    assert info.value.code == "image_truncated" and region_calls == []


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_every_shared_jpeg_is_bit_identical(region_calls: list) -> None:
    jpegs = [p for p in sorted(SHARED_DATA.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg")]
    for path in jpegs:
        data = path.read_bytes()
        assert np.array_equal(decode.decode_center_crop(data), center_crop(decode.decode_rgb(data))), path
    assert len(region_calls) >= len(jpegs) // 2  # most of them really took the region path


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_pdq_matches_meta_reference_hashes() -> None:
    dih = SHARED_DATA / "pdq" / "reg-test-input" / "dih"
    bridge1, q1 = pdq_from_pixels(pdq_pixels((dih / "bridge-1-original.jpg").read_bytes(), draft=False))
    bridge2, _ = pdq_from_pixels(pdq_pixels((dih / "bridge-2-rotate-90.jpg").read_bytes(), draft=False))
    assert bridge1 == "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22" and q1 == 100
    assert bridge2 == "30a10efd71cc3d429013d48d0ffffc52e34e0e17ada952a9d29685211ea9e5af"
    assert hamming(bridge1, bridge2) == 120
    _, q_small = pdq_from_pixels(pdq_pixels((SHARED_DATA / "pdq" / "misc-images" / "small.jpg").read_bytes()))
    assert q_small == 0


def test_draft_pdq_stays_within_match_radius_of_the_full_decode() -> None:
    from PIL import ImageDraw

    image = photo(4000, 3000, seed=6)  # structure, not just noise: noise alone has PDQ quality ~5
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.ellipse((300 * i, 200 * i % 2500, 300 * i + 900, 200 * i % 2500 + 700), fill=(20 * i, 255 - 20 * i, 120))
    data = encode(image, "JPEG", quality=92)
    full, q_full = pdq_from_pixels(pdq_pixels(data, draft=False))
    draft, q_draft = pdq_from_pixels(pdq_pixels(data))
    assert pdq_pixels(data).shape[0] < 3000  # really DCT-scaled
    assert min(q_full, q_draft) >= 50
    assert hamming(full, draft) <= 31
