"""`dda make-pairs`: each real image and its VAE reconstruction, the fake DDA learns from.

The reconstruction goes through a diffusers AutoencoderKL (the Stable Diffusion 2.1 VAE by
default, or any local diffusers VAE directory): image cropped to a multiple of 8, encoded,
a latent sampled, decoded, output truncated (not rounded) to uint8, saved as PNG. The
real's JPEG quality is estimated for the later JPEG alignment and stored in the manifest.
Resumable: pairs already on disk are kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.jpeg_quality import estimate_quality

DEFAULT_VAE = "stabilityai/stable-diffusion-2-1"
MANIFEST = "pairs.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def load_vae(spec: str, device: str) -> Any:
    from diffusers import AutoencoderKL

    dtype = torch.float16 if device == "cuda" else torch.float32
    path = Path(spec)
    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype)
    else:
        vae = AutoencoderKL.from_pretrained(spec, subfolder="vae", torch_dtype=dtype)
    return vae.to(device).eval()


def crop8(image: Image.Image) -> Image.Image:
    """Top-left crop to multiples of 8, as the reference does before encoding."""
    w, h = image.size
    return image.crop((0, 0, w - w % 8, h - h % 8))


@torch.inference_mode()
def reconstruct(vae: Any, images: list[Image.Image], generator: torch.Generator) -> list[Image.Image]:
    """VAE round trip of same-sized images in one batch: sampled latents, output truncated to uint8."""
    pixels = torch.from_numpy(np.stack([np.asarray(i, np.float32) for i in images]) / 127.5 - 1.0).permute(0, 3, 1, 2)
    pixels = pixels.to(vae.device, vae.dtype)
    latent = vae.encode(pixels).latent_dist.sample(generator=generator)
    decoded = vae.decode(latent).sample.float().clamp(-1, 1)
    out = ((decoded.permute(0, 2, 3, 1).cpu().numpy() + 1.0) * 127.5).astype(np.uint8)  # truncation, as the reference
    return [Image.fromarray(o) for o in out]


def make_pairs(reals: Path, output: Path, vae_spec: str = DEFAULT_VAE, device: str | None = None, seed: int = 0,
               batch_size: int = 8, progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Reconstruct every image under `reals` not yet in `output`; images of one size share a batch."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    output.mkdir(parents=True, exist_ok=True)
    (output / "fake").mkdir(exist_ok=True)
    manifest_path = output / MANIFEST
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"pairs": {}}
    paths = sorted(p for p in reals.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images in {reals}")
    pending: dict[tuple[int, int], list[tuple[str, Path, Image.Image, int | None]]] = {}
    for path in paths:
        key = str(path.relative_to(reals))
        fake = output / "fake" / (key.replace("/", "__") + ".png")
        if key in manifest["pairs"] and fake.is_file():
            continue
        with Image.open(path) as opened:
            quality = estimate_quality(opened) if opened.format == "JPEG" else None
            real = crop8(opened.convert("RGB"))
        if real.width and real.height:
            pending.setdefault(real.size, []).append((key, path, real, quality))
    if not pending:
        return manifest
    vae = load_vae(vae_spec, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    total, done, started = sum(len(v) for v in pending.values()), 0, time.monotonic()
    for group in pending.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            for (key, path, _, quality), fake_image in zip(chunk, reconstruct(vae, [c[2] for c in chunk], generator)):
                fake = output / "fake" / (key.replace("/", "__") + ".png")
                fake_image.save(fake)
                manifest["pairs"][key] = {"real": str(path.resolve()), "fake": str(fake.resolve()), "jpeg_quality": quality}
            manifest_path.write_text(json.dumps({**manifest, "vae": vae_spec}, indent=1))
            done += len(chunk)
            progress(f"pairs {done}/{total} ({done / (time.monotonic() - started):.2f}/s)")
    return manifest
