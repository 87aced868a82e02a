"""Torch engine throughput: the reference-like path (fp32, batch 1) beside batched paths.

Each configuration scores the same crops in one run of this script, after a warm-up, so
the rows compare like with like. With more than one precision, logits are also compared
with fp32 (max |difference| and decision flips at the model threshold).

    python benchmarks/engine_throughput.py --model DIR [--device cuda] \
        [--configs fp32:1,bf16:32,bf16:64,bf16:128,bf16:64:graphs] [--images 512]

A third field `graphs` compiles the network (torch.compile, CUDA graphs on cuda) for the
runner's batch buckets before timing: eager vs graphs side by side. Without --model a random
full-size ViT-L (the official layout) is built in a temporary directory. Crops are real: the
five views (centre and corners) of every image under ../shared/data, so 512 crops are
distinct pictures, not repeats; random noise only where that folder is absent.
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
from machine import describe

from engine.checkpoint import import_checkpoint
from engine.model_dir import load_model_dir
from engine.preprocess import views
from engine.runner import TorchRunner
from engine.synthetic import VIT_L, write_official_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GFLOP_PER_IMAGE_VITL = 382.0  # ../shared/DESIGN.md, 336 input, LoRA merged


def load_crops(count: int, size: int, saved: Path | None = None) -> np.ndarray:
    """`count` crops: from a file `--save-crops` wrote (a machine without ../shared/data or the JPEG
    extension, such as a lent GPU), else decoded here; repeated to `count`."""
    if saved is not None:
        crops = list(np.load(saved))
    else:
        from engine.decode import decode_folder  # the C extension, only where crops are decoded here

        crops = [view for _, pixels in decode_folder(SHARED_DATA) for view in views(pixels, 5, size)]  # non-images skipped
    if not crops:
        rng = np.random.default_rng(0)
        crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)]
    reps = -(-count // len(crops))
    return np.stack((crops * reps)[:count])


def measure(runner: TorchRunner, crops: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    runner.warm_up()  # compiled: every bucket now
    runner.logits(crops[: runner.max_batch])  # warm-up: allocator, kernels
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        logits = runner.logits(crops)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return len(crops) / best, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: random ViT-L in the official layout)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="fp32:1,fp32:8", help="precision:batch, comma-separated; the first is the baseline")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="accelerator dense peak for the chosen precision, to report utilisation")
    parser.add_argument("--json", help="also write results here")
    parser.add_argument("--crops", type=Path, help="crops saved by --save-crops, instead of decoding ../shared/data")
    parser.add_argument("--save-crops", type=Path, help="write --images crops (336 px, uint8) to this .npy and stop")
    args = parser.parse_args()
    if args.save_crops:
        np.save(args.save_crops, load_crops(args.images, 336))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            import_checkpoint(write_official_checkpoint(Path(tmp) / "ckpt.pth", VIT_L), model_dir)
        loaded = load_model_dir(model_dir)
        manifest = loaded.manifest
        crops = load_crops(args.images, manifest.preprocessing.crop_size, args.crops)
        rows, reference = [], None
        for config in args.configs.split(","):
            precision, batch, *mode = config.split(":")
            network = load_model_dir(model_dir).network  # fresh fp32 copy per row
            runner = TorchRunner(network, manifest.preprocessing, device=args.device, precision=precision, max_batch=int(batch),
                                 compile=mode == ["graphs"])
            rate, logits = measure(runner, crops, args.repeats)
            row = {"precision": precision, "batch": int(batch), "mode": mode[0] if mode else "eager", "images_per_s": rate}
            if manifest.architecture == VIT_L and args.peak_tflops:
                row["fraction_of_peak"] = rate * GFLOP_PER_IMAGE_VITL / (args.peak_tflops * 1000)
            if reference is None:
                reference = logits.astype(np.float64)
            else:
                diff = np.abs(logits - reference)
                row["max_abs_logit_diff_vs_baseline"] = float(diff.max())
                row["decision_flips"] = int(np.sum((logits > manifest.threshold_logit) != (reference > manifest.threshold_logit)))
            rows.append(row)
            del runner, network
    result = {"machine": describe(), "device": args.device, "model": manifest.version,
              "architecture": manifest.architecture.to_json(), "images": len(crops), "rows": rows}
    base = rows[0]["images_per_s"]
    print(f"machine: {json.dumps(result['machine'])}\nmodel {manifest.version}, {len(crops)} images, device {args.device}")
    print("| precision | batch | mode | images/s | speed-up vs first | max |dlogit| | flips |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['batch']} | {r['mode']} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x | "
              f"{r.get('max_abs_logit_diff_vs_baseline', 0):.2e} | {r.get('decision_flips', 0)} |"
              + (f" {r['fraction_of_peak']:.1%} of peak" if "fraction_of_peak" in r else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
