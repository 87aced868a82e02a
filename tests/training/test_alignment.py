from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from tests.images import photo, scene
from training import augment
from training.alignment import align_pair, blend
from training.jpeg_quality import estimate_quality
from training.train import contrastive_loss, cosine_lr


@pytest.mark.parametrize("quality", [50, 75, 90, 95, 100])
def test_jpeg_quality_is_recovered_from_the_tables(quality: int) -> None:
    buf = io.BytesIO()
    scene(200, 150, seed=quality).save(buf, "JPEG", quality=quality)
    assert estimate_quality(Image.open(buf)) == quality
    assert estimate_quality(Image.open(io.BytesIO(_png()))) is None


def _png() -> bytes:
    buf = io.BytesIO()
    photo(20, 20).save(buf, "PNG")
    return buf.getvalue()


def test_blends_keep_shape_range_and_endpoints() -> None:
    real, fake = scene(120, 90, seed=1), scene(100, 80, seed=2)
    for weight in (0.0, 0.37, 0.8, 1.0):
        mixed = np.asarray(blend(real, fake, weight))
        assert mixed.shape == (90, 120, 3) and mixed.dtype == np.uint8
    assert np.array_equal(np.asarray(blend(real, fake, 0.0)), np.asarray(real))
    resized = np.asarray(fake.resize(real.size, Image.BICUBIC))
    assert np.array_equal(np.asarray(blend(real, fake, 1.0)), resized)


def test_each_pair_gives_six_images_with_matched_sizes() -> None:
    real, fake = scene(160, 120, seed=3), scene(160, 120, seed=4)
    out = align_pair(real, fake, 90, random.Random(0))
    assert [label for _, label in out] == [0, 1, 0, 1, 0, 1]
    (r_down, _), (f_down, _), (r_up, _), (f_up, _) = out[2:]
    assert r_down.size == f_down.size and r_down.width <= 160
    assert r_up.size == f_up.size and r_up.width >= 160


def test_the_same_augmentation_hits_both_images_of_a_pair() -> None:
    rng = random.Random(5)
    real = np.asarray(scene(400, 300, seed=6))
    swapped = real[:, :, ::-1].copy()  # the "fake": same geometry, channels swapped
    for _ in range(20):
        aug = augment.sample(rng)
        # Colour operations mix channels; geometry, JPEG-free pixel noise and cropping must coincide.
        geometric = dataclasses.replace(aug, jpeg_quality=None, jitter=None, grayscale=False, blur=None, sharpen=False)
        a = augment.apply(geometric, Image.fromarray(real), 336)
        b = augment.apply(geometric, Image.fromarray(swapped), 336)
        assert a.shape == (336, 336, 3)
        assert np.array_equal(a[:, :, ::-1], b)


def test_contrastive_loss_and_periodic_cosine() -> None:
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    perfect = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # same label: distance 0; else sqrt(2) > 1
    assert contrastive_loss(perfect, labels).item() == 0.0
    mixed = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]), dim=-1)
    assert contrastive_loss(mixed, labels).item() > 0.5
    assert cosine_lr(0, 1e-4, 1000) == pytest.approx(1e-4)
    assert cosine_lr(1000, 1e-4, 1000) == pytest.approx(1e-7)
    assert cosine_lr(2000, 1e-4, 1000) == pytest.approx(1e-4)  # keeps cycling, as the reference's scheduler
