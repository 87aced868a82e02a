"""`dda export`: a training checkpoint to a model directory (LoRA merged), ready for
`dda scan`, `dda worker`, `dda export-onnx` and `dda build-engine`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.imaging.preprocess import Preprocessing
from engine.model.checkpoint import DEFAULT_THRESHOLD
from engine.model.manifest import Manifest
from engine.model.model_dir import write_model_dir
from training.model import TrainableDDA, load_initial
from training.train import load_training_state


def export(checkpoint: Path, dest: Path, threshold: float = DEFAULT_THRESHOLD) -> Manifest:
    state = load_training_state(checkpoint)
    cfg = state["config"]
    network, source = load_initial(cfg["init"])
    model = TrainableDDA(network, cfg["lora_rank"], cfg["lora_alpha"])
    model.load_state_dict(state["trainable"], strict=False)
    digest = hashlib.sha256()
    for name in sorted(state["trainable"]):
        digest.update(name.encode())
        digest.update(state["trainable"][name].float().numpy().tobytes())
    manifest = Manifest(
        name="dda",
        version=f"dda-train-{digest.hexdigest()[:12]}",
        architecture=network.arch,
        preprocessing=Preprocessing(),
        threshold=threshold,
        source={"training_checkpoint": str(checkpoint), "init": source, "step": state["step"],
                "lora": {"rank": cfg["lora_rank"], "alpha": cfg["lora_alpha"]}},
    )
    write_model_dir(dest, manifest, model.merged_tensors())
    return manifest
