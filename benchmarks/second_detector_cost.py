"""What a second detector costs: Community Forensics' ViT-S/16 at 384 px beside DDA's ViT-L/14 at 336.

In one run, both networks at full size with random weights in their published layouts
(imported by the project's importers), on the same device: seconds per image of the forward
pass (batches of --batch, best of --repeats; CPU seconds of this process on the CPU, wall
seconds after synchronising on CUDA), and the multiply-accumulates each network does per
image (counted from its shapes). Preprocessing per image on the real images under
../shared/data, CPU seconds: DDA's centre crop against Community Forensics' scale of the
shorter side to 440 px and crop; and what a decode process spends per file (`prepare`: decode,
crops, PDQ) for DDA alone (its region decode) against DDA plus the second model's crop (a
whole decode, then both crops).

    python benchmarks/second_detector_cost.py [--device cpu|cuda] [--precision fp32|bf16] [--batch 4] [--repeats 3] [--images 40]

--images 0 leaves out the preprocessing and decode-process timings (a GPU machine without the data);
--tiny measures the tests' tiny networks instead (a rehearsal of the GPU check: no figure to quote).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from engine.imaging.decode import decode_folder
from engine.imaging.preprocess import center_crop
from engine.model.arch import Architecture
from engine.model.checkpoint import import_checkpoint
from engine.model.commfor import import_commfor
from engine.model.model_dir import LoadedModel, load_model_dir
from engine.model.synthetic import (
    COMMFOR_VIT_S,
    VIT_L,
    tiny_architecture,
    tiny_commfor_architecture,
    write_commfor_checkpoint,
    write_official_checkpoint,
)
from engine.runners.contract import Precision
from engine.runners.torch_runner import TorchRunner
from worker.decode.prepare import prepare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def macs(arch: Architecture, image: int) -> float:
    """Multiply-accumulates of one image: patch embedding, every block's linear layers and attention, the head."""
    tokens = (image // arch.patch_size) ** 2 + 1
    d, h = arch.width, arch.mlp_hidden
    embed = (tokens - 1) * d * 3 * arch.patch_size**2
    block = tokens * (4 * d * d + 2 * d * h) + 2 * tokens * tokens * d
    return float(embed + arch.depth * block + d)


def forward_seconds(loaded: LoadedModel, device: str, precision: Precision, batch: int, repeats: int) -> float:
    runner = TorchRunner(loaded.network, loaded.manifest.preprocessing, device=device, precision=precision, max_batch=batch)
    size = loaded.manifest.preprocessing.crop_size
    crops = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    runner.logits(crops)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            started = time.perf_counter()
            runner.logits(crops)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        else:
            cpu = time.process_time()
            runner.logits(crops)
            best = min(best, time.process_time() - cpu)
    return best / batch


def prepare_seconds(loaded: LoadedModel, images: list[np.ndarray]) -> float:
    if not images:
        return float("nan")
    pre = loaded.manifest.preprocessing
    cpu = time.process_time()
    for rgb in images:
        center_crop(pre.prepare(rgb), pre.crop_size)
    return (time.process_time() - cpu) / len(images)


def decode_process_seconds(files: list[bytes], second: tuple[int, int] | None, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        cpu = time.process_time()
        for data in files:
            prepare(data, 336, 1, 50_000_000, second=second)
        best = min(best, time.process_time() - cpu)
    return best / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=40, help="real images for the preprocessing timing")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny networks (rehearsal)")
    args = parser.parse_args()
    print(f"machine: {json.dumps(describe())}")
    images = [rgb for _, rgb in zip(range(args.images), (p for _, p in decode_folder(SHARED)))] if args.images else []
    files = [p.read_bytes() for p in sorted(SHARED.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")][: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dda, commfor = (tiny_architecture(), tiny_commfor_architecture()) if args.tiny else (VIT_L, COMMFOR_VIT_S)
        import_checkpoint(write_official_checkpoint(root / "dda.pth", dda), root / "dda")
        import_commfor(write_commfor_checkpoint(root / "commfor.safetensors", commfor), root / "commfor")
        models = {"DDA " + ("tiny" if args.tiny else "ViT-L/14 at 336"): load_model_dir(root / "dda"),
                  "Community Forensics " + ("tiny" if args.tiny else "ViT-S/16 at 384"): load_model_dir(root / "commfor")}
        rows = []
        for name, loaded in models.items():
            pre = loaded.manifest.preprocessing
            rows.append((name, macs(loaded.manifest.architecture, pre.crop_size), forward_seconds(loaded, args.device, args.precision, args.batch, args.repeats),
                         prepare_seconds(loaded, images)))
    unit = "CPU" if args.device == "cpu" else "GPU wall"
    megapixels = np.mean([i.shape[0] * i.shape[1] for i in images]) / 1e6 if images else 0.0
    print(f"| model | GMACs an image | {unit} ms an image (forward, batch {args.batch}, {args.precision}) | vs DDA | preprocessing CPU ms an image "
          f"({len(images)} real images, mean {megapixels:.1f} MP) |")
    print("|---|---|---|---|---|")
    for name, mac, forward, prepared in rows:
        print(f"| {name} | {mac / 1e9:.1f} | {forward * 1000:.1f} | {forward / rows[0][2]:.3f}x | {prepared * 1000:.2f} |")
    if not files:
        return
    alone, both = decode_process_seconds(files, None, args.repeats), decode_process_seconds(files, (440, 384), args.repeats)
    print(f"\ndecode process per file ({len(files)} files), CPU ms: DDA alone {alone * 1000:.2f}, DDA + second crop {both * 1000:.2f} "
          f"({both / alone:.2f}x)")


if __name__ == "__main__":
    main()
