"""What a shadow model costs: the served model alone vs served + shadow on the same crops.

One process, CPU torch, the test suite's tiny ViT as both models (the shadow is the served
model with its head bias moved, so the same architecture: the case of a retrained candidate).
Batches of 64 crops as the worker's engine stage scores them; the shadow scores all of them
(fraction 1.0) or a quarter (0.25, the first 16). CPU seconds of this process per image,
best of --repeats rounds of --batches batches, and the ratio to the served model alone.

    python benchmarks/shadow_cost.py [--batches 20] [--repeats 3]
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

from engine.model.checkpoint import import_checkpoint
from engine.model.manifest import read_manifest
from engine.model.model_dir import load_model_dir
from engine.model.synthetic import tiny_architecture, write_official_checkpoint
from engine.runners.torch_runner import TorchRunner
from tests.models import shifted_copy
from worker.metrics import Metrics
from worker.pipeline.shadow import Shadow

BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core: CPU time per image, not how two cores share it
    print(f"machine: {json.dumps(describe())}, torch threads 1")
    with tempfile.TemporaryDirectory() as tmp:
        served_dir = Path(tmp) / "a"
        import_checkpoint(write_official_checkpoint(Path(tmp) / "ckpt.pth", tiny_architecture(), seed=3), served_dir)
        shadow_dir = shifted_copy(served_dir, Path(tmp) / "b", 0.5)
        runners = [TorchRunner(m.network, m.manifest.preprocessing, max_batch=BATCH) for m in map(load_model_dir, (served_dir, shadow_dir))]
        size = runners[0].preprocessing.crop_size
        crops = np.random.default_rng(0).integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
        manifest = read_manifest(served_dir)
        rows = []
        for fraction in (0.0, 0.25, 1.0):
            shadow = Shadow(read_manifest(shadow_dir), runners[1], fraction) if fraction else None
            sampled = int(BATCH * fraction)
            best = float("inf")
            for _ in range(args.repeats):
                cpu = time.process_time()
                for _ in range(args.batches):
                    logits = runners[0].logits(crops)
                    if shadow is not None:
                        shadow.score([crops[i : i + 1] for i in range(sampled)],
                                     [(float(v), "real") for v in logits[:sampled]], Metrics())
                best = min(best, (time.process_time() - cpu) / (args.batches * BATCH))
            rows.append((fraction, best))
        print(f"model: tiny ViT ({manifest.architecture}), crop {size} px, batches of {BATCH}")
        print("| shadow fraction | CPU ms per served image | vs served alone |")
        print("|---|---|---|")
        for fraction, seconds in rows:
            print(f"| {fraction:g} | {seconds * 1000:.3f} | {seconds / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
