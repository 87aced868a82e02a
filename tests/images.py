"""Generated test images (no test framework needed, so benchmarks on a bare machine use them too)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients plus noise), so crops differ by position."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A structured image (shapes on a gradient): PDQ quality well above 50, unlike noise."""
    from PIL import ImageDraw

    image = photo(width, height, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        w, h = int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


# --- no process left behind ----------------------------------------------------------------------
