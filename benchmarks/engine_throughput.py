"""Torch engine throughput: the reference-like path (fp32, batch 1) beside batched paths.

Each configuration scores the same crops in one run of this script, after a warm-up, so
the rows compare like with like. With more than one precision, logits are also compared
with fp32 (max |difference| and decision flips at the model threshold).

    python benchmarks/engine_throughput.py --model DIR [--device cuda] \
        [--configs fp32:1,bf16:32,bf16:64,bf16:128,bf16:64:graphs] [--images 512]

A third field `graphs` compiles the network (torch.compile, CUDA graphs on cuda) for the
runner's batch buckets before timing: eager vs graphs side by side. Without --model a random
full-size ViT-L (the official layout) is built in a temporary directory (`--tiny`: a two-block
one, for a CPU rehearsal). Crops are real: the five views (centre and corners) of every image
under ../shared/data (or the file `--save-crops` wrote), plus `--generated N` views of generated
scenes, so every crop is a distinct picture; `--images` repeats them to a larger count.
`--profile bf16:64` then times that configuration's kernels by kind (matrix products, attention,
the rest, copies) against the wall clock: where the time goes, and how much is launch gaps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe
from tables import engine_table

from engine.imaging.preprocess import views
from engine.model.arch import Architecture
from engine.model.checkpoint import import_checkpoint
from engine.model.model_dir import load_model_dir
from engine.model.synthetic import VIT_L, tiny_architecture, write_official_checkpoint
from engine.runners.torch_runner import TorchRunner

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GFLOP_PER_IMAGE_VITL = 382.0  # ../shared/DESIGN.md, 336 input, LoRA merged


def load_crops(count: int, size: int, saved: Path | None = None, generated: int = 0, real: int | None = None) -> tuple[np.ndarray, int]:
    """At least `count` crops (0: each distinct crop once) and how many are distinct: at most
    `real` (None: all) real ones, from a file `--save-crops` wrote (a machine without
    ../shared/data or the JPEG extension, such as a lent GPU) or else decoded here; then
    `generated` views of generated scenes; repeated to `count`."""
    if saved is not None:
        crops = [crop for crop in np.load(saved) if crop.shape[0] == size][:real]
    else:
        from engine.imaging.decode import decode_folder  # the C extension, only where crops are decoded here

        every = (view for _, pixels in decode_folder(SHARED_DATA) for view in views(pixels, 5, size))  # non-images skipped
        crops = list(itertools.islice(every, real))
    if generated:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.images import scene

        seed = 0
        while generated > 0:
            rng = np.random.default_rng(seed)
            width, height = int(rng.integers(size, 3 * size)), int(rng.integers(size, 3 * size))
            made = views(np.asarray(scene(width, height, seed=seed).convert("RGB")), 5, size)[:generated]
            crops.extend(made)
            generated -= len(made)
            seed += 1
    if not crops:
        rng = np.random.default_rng(0)
        crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)]
    distinct = len(crops)
    reps = -(-max(count, distinct) // distinct)
    return np.stack((crops * reps)[: max(count, distinct)]), distinct


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


# Kernel (or, on a CPU, operator) names by kind, first match wins; all else is "other".
KINDS = (("attention", ("flash", "fmha", "attention", "sdpa", "scaled_dot_product")),
         ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "addmm", "aten::mm", "bmm")),
         ("copy", ("memcpy", "memset", "aten::copy_")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, marks in KINDS if any(mark in low for mark in marks)), "other")


def attention_gflop(architecture: Architecture, crop_size: int) -> float:
    """The attention products' share of an image's GFLOP (QK^T and AV: 4·T²·width per block)."""
    tokens = (crop_size // architecture.patch_size) ** 2 + 1
    return 4 * tokens**2 * architecture.width * architecture.depth / 1e9


def profile(runner: TorchRunner, crops: np.ndarray, batches: int) -> dict[str, float]:
    """Self time by kernel kind per batch of `runner.max_batch`, in ms (device kernels on a GPU,
    operators on a CPU), over `batches` batches under torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    chunk = crops[: runner.max_batch]
    cuda = runner.device.type == "cuda"
    runner.logits(chunk)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch_profile(activities=activities) as prof:
        for _ in range(batches):
            runner.logits(chunk)
        if cuda:
            torch.cuda.synchronize()
    per_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if cuda and event.device_type != DeviceType.CUDA:
            continue
        us = getattr(event, "self_device_time_total", 0.0) if cuda else event.self_cpu_time_total
        per_kind[kernel_kind(event.key)] += us / 1000 / batches
    return dict(per_kind)


def explain(kernels: dict[str, Any], rows: list[dict[str, Any]], architecture: Architecture, crop_size: int) -> dict[str, Any]:
    """The profile beside the timed row of the same configuration: the share of its wall time the
    kernels fill (the rest is launch gaps and host work), and the rate of the matrix products and
    the attention kernels against their share of the image's FLOPs (ViT-L only: 382 GFLOP)."""
    precision, batch, *mode = kernels["config"].split(":")
    row = next((r for r in rows if (r["precision"], r["batch"], r["mode"]) == (precision, int(batch), mode[0] if mode else "eager")), None)
    by_kind = kernels["ms_per_batch_by_kind"]
    out = dict(kernels)
    if row is not None:
        out["kernel_share_of_wall"] = sum(by_kind.values()) / row["ms_per_batch"]
    if architecture == VIT_L:
        attention = attention_gflop(architecture, crop_size) * int(batch)
        for kind, gflop in (("matmul", GFLOP_PER_IMAGE_VITL * int(batch) - attention), ("attention", attention)):
            if by_kind.get(kind):
                out[f"{kind}_tflops"] = gflop / by_kind[kind]  # GFLOP per ms = TFLOP/s
    return out


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
    parser.add_argument("--generated", type=int, default=0, help="add this many distinct crops of generated scenes")
    parser.add_argument("--real", type=int, help="use at most this many real crops (default: all)")
    parser.add_argument("--tiny", action="store_true", help="a random two-block model instead of ViT-L (a CPU rehearsal)")
    parser.add_argument("--profile", help="precision:batch[:graphs] whose kernel time by kind is reported")
    parser.add_argument("--profile-batches", type=int, default=10)
    args = parser.parse_args()
    if args.save_crops:
        np.save(args.save_crops, load_crops(args.images, 336)[0][: args.images])
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            architecture = tiny_architecture() if args.tiny else VIT_L
            import_checkpoint(write_official_checkpoint(Path(tmp) / "ckpt.pth", architecture), model_dir)
        loaded = load_model_dir(model_dir)
        manifest = loaded.manifest
        crop_size = manifest.preprocessing.crop_size
        crops, distinct = load_crops(args.images, crop_size, args.crops, args.generated, args.real)
        rows, reference, kernels = [], None, None
        for config in [*args.configs.split(","), *([f"{args.profile}:profile"] if args.profile else [])]:
            precision, batch, *mode = config.split(":")
            network = load_model_dir(model_dir).network  # fresh fp32 copy per row
            runner = TorchRunner(network, manifest.preprocessing, device=args.device, precision=precision, max_batch=int(batch),
                                 compile="graphs" in mode)
            if "profile" in mode:
                kernels = {"config": args.profile, "ms_per_batch_by_kind": profile(runner, crops, args.profile_batches)}
                del runner, network
                continue
            rate, logits = measure(runner, crops, args.repeats)
            row = {"precision": precision, "batch": int(batch), "mode": mode[0] if mode else "eager", "images_per_s": rate,
                   "ms_per_batch": int(batch) / rate * 1000}
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
    result = {"machine": describe(), "device": args.device, "model": manifest.version, "architecture": manifest.architecture.to_json(),
              "images": len(crops), "distinct_crops": distinct, "peak_tflops": args.peak_tflops, "rows": rows}
    if kernels:
        result["kernels"] = explain(kernels, rows, manifest.architecture, crop_size)
    print(f"machine: {json.dumps(result['machine'])}", *engine_table(result), sep="\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
