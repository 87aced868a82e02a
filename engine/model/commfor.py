"""Import the Community Forensics detector (CVPR 2025) into a model directory.

The released checkpoint (`OwensLab/commfor-model-384` on the Hugging Face hub, MIT licence)
is the state dict of the authors' `ViTClassifier`: timm's `vit_small_patch16_384` under
`vit.`, its classifier replaced by `Linear(384, 1)`, as `model.safetensors`. The same state
dict in a torch file (the authors also publish those) is read without running code. Their
inference scales the shorter side to 440 px, centre-crops 384 and normalises with ImageNet's
statistics; the logit's sigmoid is P(AI-generated), as DDA's is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZED_STEPS, Preprocessing
from engine.model.arch import ArchitectureError, expected_shapes, infer_architecture
from engine.model.checkpoint import DEFAULT_THRESHOLD, CheckpointError, safe_torch_load, sha256_file, state_dict_with
from engine.model.manifest import Manifest
from engine.model.model_dir import write_model_dir

PREFIX = "vit."
RESIZE = 440
CROP = 384
PREPROCESSING = Preprocessing(crop_size=CROP, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=RESIZE, steps=RESIZED_STEPS)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file opens with its header's length (8 bytes, little-endian), then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27)


def _load_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if _is_safetensors(path):
        try:
            obj: object = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    else:
        obj = safe_torch_load(path)
    return state_dict_with(obj, PREFIX, path, "not the Community Forensics layout")


def import_commfor(src: Path, dest: Path, *, threshold: float = DEFAULT_THRESHOLD, source_uri: str | None = None,
                   progress: Callable[[str], None] = lambda _msg: None, name: str = "commfor") -> Manifest:
    """Validate `src` (every key and shape, nothing more) and write the model directory `dest`."""
    progress(f"hashing {src}")
    digest = sha256_file(src)
    state = _load_state_dict(src)
    shapes = {k[len(PREFIX) :]: tuple(t.shape) for k, t in state.items() if k.startswith(PREFIX)}
    try:
        arch = infer_architecture(shapes)
    except ArchitectureError as exc:
        raise CheckpointError(f"{src}: {exc}") from exc
    if arch.layerscale:
        raise CheckpointError(f"{src}: blocks carry LayerScale: a DINOv2 backbone, not Community Forensics' timm ViT")
    if arch.pos_grid * arch.patch_size != CROP:
        raise CheckpointError(f"{src}: a {arch.pos_grid}x{arch.pos_grid} positional table of {arch.patch_size} px patches "
                              f"does not cover the {CROP} px input")
    wanted = expected_shapes(arch)
    for key, shape in wanted.items():
        got = shapes.get(key)
        if got is None:
            raise CheckpointError(f"missing key {PREFIX + key!r}")
        if got != shape:
            raise CheckpointError(f"key {PREFIX + key!r} has shape {list(got)}, expected {list(shape)}")
    unknown = sorted(set(state) - {PREFIX + k for k in wanted})
    if unknown:
        raise CheckpointError(f"unexpected key {unknown[0]!r} (and {len(unknown) - 1} more): not the Community Forensics layout")
    manifest = Manifest(name=name, version=f"{name}-{digest[:12]}", architecture=arch, preprocessing=PREPROCESSING,
                        threshold=threshold, source={"file": src.name, "uri": source_uri or str(src), "sha256": digest})
    progress(f"writing {dest}")
    write_model_dir(dest, manifest, ((k, state[PREFIX + k].float()) for k in wanted))
    return manifest
