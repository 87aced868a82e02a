"""Random checkpoints in the official DDA (and Community Forensics) layouts, for tests, benchmarks and drills.

The released checkpoint cannot be fetched on CI, and its layout is what the importer
must get right, so tests build files with the same keys, shapes and nesting, at any size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model.arch import HEAD_DIM, LORA_TARGETS, Architecture, expected_shapes
from engine.model.checkpoint import BACKBONE, HEAD, import_checkpoint
from engine.model.manifest import Manifest

VIT_L = Architecture(width=1024, depth=24, heads=16, mlp_hidden=4096, patch_size=14, pos_grid=37)


def tiny_architecture(depth: int = 2, heads: int = 2, pos_grid: int = 4) -> Architecture:
    width = heads * HEAD_DIM
    return Architecture(width=width, depth=depth, heads=heads, mlp_hidden=4 * width, patch_size=14, pos_grid=pos_grid)


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen)
    if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
        return 1.0 + 0.1 * noise
    if name.endswith(".gamma"):
        return 0.3 + 0.05 * noise
    if name.endswith(".weight") and len(shape) >= 2:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return noise / fan_in**0.5
    return 0.02 * noise


def random_official_state(arch: Architecture, rank: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict keyed exactly like the authors' LoRA-wrapped model."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(arch).items():
        module, _, leaf = name.rpartition(".")
        if name.startswith("head."):
            state[HEAD + leaf] = _init(name, shape, gen)
        elif any(module.endswith(t) for t in LORA_TARGETS):
            state[f"{BACKBONE}{module}.original_layer.{leaf}"] = _init(name, shape, gen)
            if leaf == "weight":
                state[f"{BACKBONE}{module}.lora.lora_A"] = torch.randn((rank, shape[1]), generator=gen) / shape[1] ** 0.5
                state[f"{BACKBONE}{module}.lora.lora_B"] = 0.5 * torch.randn((shape[0], rank), generator=gen) / rank**0.5
        else:
            state[BACKBONE + name] = _init(name, shape, gen)
    state[BACKBONE + "mask_token"] = torch.zeros(1, arch.width)
    return state


def write_official_checkpoint(path: Path, arch: Architecture, rank: int = 8, seed: int = 0) -> Path:
    """Save {"model": state, ...} the way the authors' trainer does (optimizer entry included)."""
    torch.save({"model": random_official_state(arch, rank, seed), "optimizer": {}, "total_steps": 0}, path)
    return path


def random_dinov2_state(arch: Architecture, seed: int = 0) -> dict[str, torch.Tensor]:
    """A backbone keyed like facebookresearch/dinov2's ViT (no head, with the mask token)."""
    gen = torch.Generator().manual_seed(seed)
    state = {name: _init(name, shape, gen) for name, shape in expected_shapes(arch).items() if not name.startswith("head.")}
    state["mask_token"] = torch.zeros(1, arch.width)
    return state


COMMFOR_VIT_S = Architecture(width=384, depth=12, heads=6, mlp_hidden=1536, patch_size=16, pos_grid=24, layerscale=False)


def tiny_commfor_architecture(depth: int = 2, heads: int = 2) -> Architecture:
    """Community Forensics' layout at a test size (the 384 px input still needs a 24x24 table)."""
    width = heads * HEAD_DIM
    return Architecture(width=width, depth=depth, heads=heads, mlp_hidden=4 * width, patch_size=16, pos_grid=24, layerscale=False)


def random_commfor_state(arch: Architecture, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict keyed like the authors' ViTClassifier: timm's ViT under `vit.`, a one-logit head."""
    gen = torch.Generator().manual_seed(seed)
    return {"vit." + name: _init(name, shape, gen) for name, shape in expected_shapes(arch).items()}


def write_commfor_checkpoint(path: Path, arch: Architecture, seed: int = 0) -> Path:
    """As the hub publishes it (`.safetensors`) or as a torch file (any other suffix)."""
    state = random_commfor_state(arch, seed)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


TEST_MODEL_WARNING = "random weights: a test model, not a detector; its labels and scores mean nothing"


def write_test_model(dest: Path, seed: int = 0) -> Manifest:
    """A small random model directory for trying the worker without the released checkpoint;
    its manifest carries TEST_MODEL_WARNING, which every verdict it produces repeats."""
    with tempfile.TemporaryDirectory(prefix="dda-test-model-") as tmp:
        checkpoint = write_official_checkpoint(Path(tmp) / "random.pth", tiny_architecture(), seed=seed)
        return import_checkpoint(checkpoint, dest, source_uri=f"dda make-test-model --seed {seed}", name="dda-test-model",
                                 warning=TEST_MODEL_WARNING)
