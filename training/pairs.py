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
from pathlib import Path
from typing import Any, Callable

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


@torch.inference_mode()
def reconstruct(vae: Any, image: Image.Image, generator: torch.Generator) -> Image.Image:
    """VAE round trip of `image` cropped to a multiple of 8 (top-left kept, as the reference)."""
    w, h = image.size
    image = image.crop((0, 0, w - w % 8, h - h % 8))
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    pixels = pixels.to(vae.device, vae.dtype)
    latent = vae.encode(pixels).latent_dist.sample(generator=generator)
    decoded = vae.decode(latent).sample.float().clamp(-1, 1)
    out = ((decoded[0].permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5).astype(np.uint8)  # truncation, as the reference
    return Image.fromarray(out)


def make_pairs(reals: Path, output: Path, vae_spec: str = DEFAULT_VAE, device: str | None = None, seed: int = 0,
               progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    output.mkdir(parents=True, exist_ok=True)
    (output / "fake").mkdir(exist_ok=True)
    manifest_path = output / MANIFEST
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"pairs": {}}
    paths = sorted(p for p in reals.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images in {reals}")
    vae = load_vae(vae_spec, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    started, done = time.monotonic(), 0
    for index, path in enumerate(paths):
        key = str(path.relative_to(reals))
        fake = output / "fake" / (key.replace("/", "__") + ".png")
        if key in manifest["pairs"] and fake.is_file():
            continue
        with Image.open(path) as opened:
            quality = estimate_quality(opened) if opened.format == "JPEG" else None
            real = opened.convert("RGB")
        if real.width < 8 or real.height < 8:
            continue
        reconstruct(vae, real, generator).save(fake)
        manifest["pairs"][key] = {"real": str(path.resolve()), "fake": str(fake.resolve()), "jpeg_quality": quality}
        manifest_path.write_text(json.dumps({**manifest, "vae": vae_spec}, indent=1))
        done += 1
        progress(f"pair {index + 1}/{len(paths)} ({done / (time.monotonic() - started):.2f}/s): {key}")
    return manifest
