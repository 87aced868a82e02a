from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.imaging.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    Preprocessing,
    center_crop,
    five_crops,
    normalize,
    plan_center_crop,
    views,
)
from tests.images import photo


def reference_crop(image: Image.Image, size: int = 336) -> np.ndarray:
    """The reference's steps on a PIL image: zero-pad short sides, then round()-centred crop."""
    w, h = image.size
    padded = Image.new("RGB", (max(w, size), max(h, size)))
    padded.paste(image, ((size - w) // 2 if w < size else 0, (size - h) // 2 if h < size else 0))
    top = int(round((padded.height - size) / 2.0))
    left = int(round((padded.width - size) / 2.0))
    return np.asarray(padded.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize(("extra", "offset"), [(1, 0), (3, 2), (5, 2), (7, 4), (9, 4), (2, 1), (0, 0)])
def test_crop_offsets_round_half_to_even(extra: int, offset: int) -> None:
    # (H - 336) / 2 = 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 4.5 -> 4: Python's round, not floor or half-up.
    plan = plan_center_crop(336 + extra, 336 + extra)
    assert (plan.top, plan.left) == (offset, offset)


def test_padding_puts_the_smaller_half_first() -> None:
    plan = plan_center_crop(100, 333)
    assert (plan.pad_top, plan.pad_left) == (118, 1)  # 236 // 2 and 3 // 2; the odd pixel goes bottom/right
    crop = center_crop(np.full((100, 333, 3), 7, np.uint8))
    rows = slice(118, 218)
    assert crop[rows, 0].max() == 0 and crop[rows, 1].min() == 7
    assert crop[rows, 333].min() == 7 and crop[rows, 334:].max() == 0
    assert crop[:118].max() == 0 and crop[218:].max() == 0 and crop[rows, 1:334].min() == 7


@pytest.mark.parametrize("size", [(767, 511), (673, 673), (224, 399), (34, 42), (336, 336), (335, 337), (4001, 3001), (500, 325)])
def test_center_crop_equals_reference_steps(size: tuple[int, int]) -> None:
    image = photo(*size, seed=size[0])
    assert np.array_equal(center_crop(np.asarray(image)), reference_crop(image))


def test_five_crops_are_centre_and_corners() -> None:
    pixels = np.asarray(photo(900, 700, seed=1))
    crops = five_crops(pixels)
    assert crops.shape == (5, 336, 336, 3)
    assert np.array_equal(crops[0], center_crop(pixels))
    assert np.array_equal(crops[1], pixels[:336, :336])
    assert np.array_equal(crops[2], pixels[:336, -336:])
    assert np.array_equal(crops[3], pixels[-336:, :336])
    assert np.array_equal(crops[4], pixels[-336:, -336:])
    assert views(pixels, 1).shape == (1, 336, 336, 3)
    with pytest.raises(ValueError, match="crops must be 1 or 5"):
        views(pixels, 3)


def test_normalisation_uses_clip_statistics_not_imagenet() -> None:
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    batch = torch.from_numpy(np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 128, 255)]))
    out = normalize(batch, Preprocessing())
    assert out.shape == (3, 3, 2, 2) and out.dtype == torch.float32
    for i, v in enumerate((0, 128, 255)):
        for c in range(3):
            expected = (np.float32(v) / np.float32(255) - np.float32(CLIP_MEAN[c])) / np.float32(CLIP_STD[c])
            assert out[i, c, 0, 0].item() == pytest.approx(float(expected), abs=1e-7)


def test_crop_rejects_non_rgb_arrays() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        center_crop(np.zeros((10, 10), np.uint8))
