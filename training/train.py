"""`dda train`: the DDA recipe on pairs made by `dda make-pairs`.

Each step takes `pairs_per_step` pairs; each pair becomes six images (real, fake, and their
down- and upscaled copies, see `training.alignment`), all six augmented identically
(`training.augment`). Loss = 0.5 * BCE(logit, label) + 0.5 * contrastive loss on the
L2-normalised class-token features (positive margin 0, negative margin 1). AdamW (lr
1e-4, no weight decay), a cosine schedule whose period is 1,000 steps and keeps cycling,
gradient accumulation, bf16 autocast on CUDA and fp32 on CPU. Checkpoints hold LoRA and
head weights, optimizer, schedule and RNG states, so a run resumes exactly.

The per-step loss is noisy (a few pairs, fresh augmentations every step), so the log also
records a probe loss: the same loss on one fixed, seeded batch drawn from up to eight
pairs, before the first step and at every checkpoint. Its trend is the run's health signal.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from engine.imaging.preprocess import CROP_SIZE, Preprocessing, normalize
from engine.model.checkpoint import CheckpointError, safe_torch_load
from training import augment
from training.alignment import AlignmentConfig, align_pair
from training.model import TrainableDDA, load_initial
from training.pairs import MANIFEST

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
PROBE_PAIRS = 8


@dataclass(frozen=True)
class TrainConfig:
    init: str
    pairs: str
    output: str
    steps: int = 1000
    pairs_per_step: int = 2
    accumulation: int = 4
    lr: float = 1e-4
    cosine_period: int = 1000
    lora_rank: int = 8
    lora_alpha: float = 1.0
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100


def load_training_state(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """A `dda train` checkpoint, read without running code: a crafted file passed to `dda export`
    or left in an output directory must not execute anything (CheckpointError instead)."""
    state = safe_torch_load(path, map_location, mmap=False)  # resuming overwrites this very file
    if not isinstance(state, dict) or not {"trainable", "step", "config"} <= state.keys():
        raise CheckpointError(f"{path}: not a `dda train` checkpoint (no trainable/step/config entries)")
    return state


def contrastive_loss(features: Tensor, labels: Tensor, pos_margin: float = 0.0, neg_margin: float = 1.0) -> Tensor:
    """Pairwise contrastive loss over the batch: same-label pairs pulled within `pos_margin`,
    different-label pairs pushed beyond `neg_margin`; each part averaged over its non-zero terms."""
    distances = torch.cdist(features.float(), features.float())
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = torch.relu(distances[same & off_diagonal] - pos_margin)
    neg = torch.relu(neg_margin - distances[~same])
    total = features.new_zeros(())
    for part in (pos, neg):
        nonzero = part[part > 0]
        if len(nonzero):
            total = total + nonzero.mean()
    return total


def cosine_lr(step: int, base: float, period: int, floor_ratio: float = 0.001) -> float:
    """Cosine annealing that restarts its climb instead of stopping at the period (as the reference)."""
    floor = base * floor_ratio
    return floor + (base - floor) * (1 + math.cos(math.pi * step / period)) / 2


def load_pairs(folder: Path) -> list[dict[str, Any]]:
    manifest = json.loads((folder / MANIFEST).read_text())
    pairs = list(manifest["pairs"].values())
    if not pairs:
        raise ValueError(f"{folder / MANIFEST} lists no pairs")
    return pairs


def step_batch(pairs: list[dict[str, Any]], rng: random.Random, pre: Preprocessing) -> tuple[Tensor, Tensor]:
    crops, labels = [], []
    for pair in pairs:
        real = Image.open(pair["real"]).convert("RGB")
        fake = Image.open(pair["fake"]).convert("RGB")
        aug = augment.sample(rng)
        for image, label in align_pair(real, fake, pair.get("jpeg_quality"), rng, AlignmentConfig()):
            crops.append(augment.apply(aug, image, pre.crop_size))
            labels.append(label)
    x = normalize(torch.from_numpy(np.stack(crops)), pre)
    return x, torch.tensor(labels, dtype=torch.float32)


def _loss(model: TrainableDDA, x: Tensor, y: Tensor, autocast: Any) -> Tensor:
    with autocast:
        features, logits = model(x)
    return 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y) + 0.5 * contrastive_loss(features, y)


def train(cfg: TrainConfig, log: Callable[[str], None] = lambda _m: None) -> Path:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    network, source = load_initial(cfg.init)
    model = TrainableDDA(network, cfg.lora_rank, cfg.lora_alpha).to(cfg.device)
    model.network.refresh_pos_table()
    optimizer = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=0.0)
    pre = Preprocessing(crop_size=CROP_SIZE)
    pairs = load_pairs(Path(cfg.pairs))
    start = 0
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file():
        state = load_training_state(checkpoint, cfg.device)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        log(f"resuming at step {start}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.device == "cuda" else torch.autocast("cpu", enabled=False)
    probe_x, probe_y = step_batch(pairs[:PROBE_PAIRS], random.Random(cfg.seed + 1), pre)
    probe_x, probe_y = probe_x.to(cfg.device), probe_y.to(cfg.device)

    def probe(step: int) -> None:
        with torch.no_grad():
            value = _loss(model, probe_x, probe_y, autocast).item()
        log_file.write(json.dumps({"step": step, "probe_loss": value}) + "\n")
        log(f"step {step}: probe loss {value:.4f}")

    model.train()
    with open(out / LOG, "a") as log_file:
        if start == 0:
            probe(0)
        for step in range(start, cfg.steps):
            lr = cosine_lr(step, cfg.lr, cfg.cosine_period)
            for group in optimizer.param_groups:
                group["lr"] = lr
            started = time.monotonic()
            total = 0.0
            for _ in range(cfg.accumulation):
                x, y = step_batch(rng.sample(pairs, min(cfg.pairs_per_step, len(pairs))), rng, pre)
                loss = _loss(model, x.to(cfg.device), y.to(cfg.device), autocast)
                (loss / cfg.accumulation).backward()
                total += loss.item() / cfg.accumulation
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, "loss": total, "lr": lr, "seconds": round(time.monotonic() - started, 3)}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log(f"step {step + 1}/{cfg.steps} loss {total:.4f} lr {lr:.2e}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                probe(step + 1)
                torch.save({"trainable": model.trainable_state(), "optimizer": optimizer.state_dict(), "rng": rng.getstate(),
                            "torch_rng": torch.get_rng_state(), "step": step + 1, "config": asdict(cfg), "source": source},
                           checkpoint)
    return checkpoint
