"""DDA's data alignment: make each fake differ from its real only in being generated.

Per pair (the authors' recipe): with p=0.5 the fake is JPEG-compressed at the real's own
quality; with p=0.2 it is pixel-blended with its real (fake weight ~ U(0, 0.8)); a
second p=0.2 blend is the reference's "frequency" blend, which with one global ratio over
the whole DCT equals a pixel blend, so it is one here too. Then each pair gets a
downscaled (x U(0.2, 1)) and an upscaled (x U(1, 3.5)) copy, real and fake resized with
the same randomly chosen Pillow filter.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

FILTERS = (Image.NEAREST, Image.BOX, Image.BILINEAR, Image.HAMMING, Image.BICUBIC, Image.LANCZOS)


@dataclass(frozen=True)
class AlignmentConfig:
    p_jpeg_align: float = 0.5
    p_pixel_blend: float = 0.2
    p_freq_blend: float = 0.2
    max_fake_weight: float = 0.8
    down_range: tuple[float, float] = (0.2, 1.0)
    up_range: tuple[float, float] = (1.0, 3.5)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def blend(real: Image.Image, fake: Image.Image, fake_weight: float) -> Image.Image:
    """Pixel blend; the fake is resized to the real's size first if they differ."""
    if fake.size != real.size:
        fake = fake.resize(real.size, Image.BICUBIC)
    mixed = (1 - fake_weight) * np.asarray(real, np.float32) + fake_weight * np.asarray(fake, np.float32)
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


def rescale(image: Image.Image, factor: float, resample: int) -> Image.Image:
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), resample)


def align_pair(real: Image.Image, fake: Image.Image, real_quality: int | None, rng: random.Random,
               cfg: AlignmentConfig = AlignmentConfig()) -> list[tuple[Image.Image, int]]:
    """[(image, label)] for one pair: real, fake, and their down- and upscaled copies (label 1 = AI)."""
    if real_quality is not None and rng.random() < cfg.p_jpeg_align:
        fake = jpeg(fake, real_quality)
    for p in (cfg.p_pixel_blend, cfg.p_freq_blend):
        if rng.random() < p:
            fake = blend(real, fake, rng.uniform(0.0, cfg.max_fake_weight))
    out = [(real, 0), (fake, 1)]
    filters = rng.sample(FILTERS, 2)
    for (low, high), resample in zip((cfg.down_range, cfg.up_range), filters):
        factor = rng.uniform(low, high)
        out += [(rescale(real, factor, resample), 0), (rescale(fake, factor, resample), 1)]
    return out
