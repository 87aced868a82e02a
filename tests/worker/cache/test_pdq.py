"""engine.imaging._pdq is PDQ: bit-identical to the pdqhash package (Meta's C++ with its Python binding),
the reference, on the same pixels."""

from __future__ import annotations

import numpy as np
import pdqhash
import pytest

from engine.imaging.decode import decode_rgb
from tests.images import SHARED_DATA, photo, scene
from worker.cache.hashing import pdq_from_luma, pdq_from_pixels


def reference(rgb: np.ndarray) -> tuple[str, int]:
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


@pytest.mark.parametrize("size", [(64, 64), (5, 5), (7, 300), (300, 7), (481, 641), (1000, 130), (2999, 2001), (40_000, 6), (6, 40_000)])
def test_bit_identical_to_pdqhash_at_any_size(size: tuple[int, int]) -> None:
    structured = [scene(size[1], size[0], seed=7)] if min(size) >= 80 else []  # scenes need room for their shapes
    for image in [photo(size[1], size[0], seed=size[0]), *structured]:
        rgb = np.asarray(image)
        assert pdq_from_pixels(rgb) == reference(rgb), size


def test_tiny_images_hash_to_zeros_with_quality_0_as_in_the_reference() -> None:
    rgb = np.asarray(photo(4, 30, seed=1))
    assert pdq_from_pixels(rgb) == ("0" * 64, 0) == reference(rgb)


def test_a_luminance_plane_hashes_as_its_grey_rgb() -> None:
    grey = np.asarray(scene(400, 300, seed=2).convert("L"))
    assert pdq_from_luma(grey) == pdq_from_pixels(np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.skipif(not (SHARED_DATA / "pdq").is_dir(), reason="../shared/data not present")
def test_bit_identical_to_pdqhash_on_every_shared_image() -> None:
    compared = 0
    for path in sorted(SHARED_DATA.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"):
            continue
        try:
            rgb = decode_rgb(path.read_bytes())
        except ValueError:  # the shared data holds a few deliberately broken files
            continue
        assert pdq_from_pixels(rgb) == reference(rgb), path
        compared += 1
    assert compared >= 140
