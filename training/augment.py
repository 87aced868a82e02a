"""The reference's training augmentations, drawn once and applied identically to every
image of a pair, so that no augmentation can tell real from fake.

Parameters are sampled into an `Augmentation` first; applying it is deterministic. The
random crop is drawn as a fraction of the free range, so copies of different sizes are
cut at corresponding places.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from training.alignment import jpeg


@dataclass(frozen=True)
class Augmentation:
    jpeg_quality: int | None = None
    hflip: bool = False
    vflip: bool = False
    gaussian_sigma: float | None = None
    pepper_amount: float | None = None
    blur: str | None = None  # gaussian3, gaussian5, median3, motion5
    sharpen: bool = False
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue shift
    grayscale: bool = False
    crop_u: float = 0.5
    crop_v: float = 0.5
    noise_seed: int = 0


def sample(rng: random.Random) -> Augmentation:
    return Augmentation(
        jpeg_quality=rng.randint(55, 100) if rng.random() < 0.15 else None,
        hflip=rng.random() < 0.5,
        vflip=rng.random() < 0.5,
        gaussian_sigma=rng.uniform(1.0, 10.0) if rng.random() < 0.1 else None,
        pepper_amount=rng.uniform(0.001, 0.01) if rng.random() < 0.1 else None,
        blur=rng.choice(["gaussian3", "gaussian5", "median3", "motion5"]) if rng.random() < 0.2 else None,
        sharpen=rng.random() < 0.1,
        jitter=(rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(-0.175, 0.175))
        if rng.random() < 0.2 else None,
        grayscale=rng.random() < 0.1,
        crop_u=rng.random(),
        crop_v=rng.random(),
        noise_seed=rng.randrange(1 << 30),
    )


def _hue_shift(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _blur(image: Image.Image, kind: str) -> Image.Image:
    if kind == "gaussian3":
        return image.filter(ImageFilter.GaussianBlur(radius=0.8))
    if kind == "gaussian5":
        return image.filter(ImageFilter.GaussianBlur(radius=1.1))
    if kind == "median3":
        return image.filter(ImageFilter.MedianFilter(3))
    kernel = [0.0] * 25
    for i in range(5):
        kernel[2 * 5 + i] = 1 / 5  # horizontal motion blur
    return image.filter(ImageFilter.Kernel((5, 5), kernel, scale=1))


def apply(aug: Augmentation, image: Image.Image, size: int) -> np.ndarray:
    """The augmented, zero-padded, randomly cropped [size, size, 3] uint8 view."""
    image = image.convert("RGB")
    if aug.jpeg_quality is not None:
        image = jpeg(image, aug.jpeg_quality)
    if aug.hflip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if aug.vflip:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
    pixels = np.asarray(image, np.float32)
    noise = np.random.default_rng(aug.noise_seed)
    if aug.gaussian_sigma is not None:
        pixels = pixels + noise.normal(0, aug.gaussian_sigma, pixels.shape)
    if aug.pepper_amount is not None:
        pixels = np.where(noise.random(pixels.shape[:2])[..., None] < aug.pepper_amount, 0, pixels)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if aug.blur is not None:
        image = _blur(image, aug.blur)
    if aug.sharpen:
        image = image.filter(ImageFilter.SHARPEN)
    if aug.jitter is not None:
        b, c, s, h = aug.jitter
        image = ImageEnhance.Brightness(image).enhance(b)
        image = ImageEnhance.Contrast(image).enhance(c)
        image = ImageEnhance.Color(image).enhance(s)
        image = _hue_shift(image, h)
    if aug.grayscale:
        image = image.convert("L").convert("RGB")
    return random_crop(np.asarray(image), size, aug.crop_u, aug.crop_v)


def random_crop(rgb: np.ndarray, size: int, u: float, v: float) -> np.ndarray:
    """Zero-pad short sides (smaller half first, as the reference), then crop at fraction (u, v)."""
    h, w = rgb.shape[:2]
    padded = np.zeros((max(h, size), max(w, size), 3), np.uint8)
    top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
    padded[top : top + h, left : left + w] = rgb
    y = int(u * (padded.shape[0] - size + 1)) if padded.shape[0] > size else 0
    x = int(v * (padded.shape[1] - size + 1)) if padded.shape[1] > size else 0
    y, x = min(y, padded.shape[0] - size), min(x, padded.shape[1] - size)
    return padded[y : y + size, x : x + size]
