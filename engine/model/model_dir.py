"""A model directory: `model.safetensors` (merged fp32 weights) + `manifest.json`.

The manifest (`engine.model.manifest`) is written last, so a directory with one is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.model.arch import expected_shapes
from engine.model.manifest import MANIFEST, Manifest, ModelDirError, read_manifest
from engine.model.safetensors_stream import write_streamed
from engine.model.vit import DdaViT, build_network

WEIGHTS = "model.safetensors"


@dataclass
class LoadedModel:
    manifest: Manifest
    network: DdaViT


def write_model_dir(dest: Path, manifest: Manifest, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Stream `tensors` (in `expected_shapes` order) into `dest`, manifest last.

    The manifest is written after the weights, so a directory with a manifest is complete.
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).unlink(missing_ok=True)
    shapes = expected_shapes(manifest.architecture)
    write_streamed(dest / WEIGHTS, shapes, tensors, metadata={"version": manifest.version})
    write_manifest(dest, manifest)


def write_manifest(dest: Path, manifest: Manifest) -> None:
    tmp = dest / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    tmp.replace(dest / MANIFEST)


def load_model_dir(path: Path) -> LoadedModel:
    """Load weights on the CPU in fp32, checking every tensor against the manifest."""
    manifest = read_manifest(path)
    shapes = expected_shapes(manifest.architecture)
    weights: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            present = set(f.keys())
            for name, shape in shapes.items():
                if name not in present:
                    raise ModelDirError(f"{path / WEIGHTS}: missing tensor {name!r}")
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != shape:
                    raise ModelDirError(f"{path / WEIGHTS}: {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
                weights[name] = tensor.float()
    except (OSError, SafetensorError) as exc:  # missing, truncated or corrupt file
        raise ModelDirError(f"cannot read {path / WEIGHTS}: {exc}") from exc
    extra = present - shapes.keys()
    if extra:
        raise ModelDirError(f"{path / WEIGHTS}: unexpected tensor {sorted(extra)[0]!r}")
    network = build_network(manifest.architecture, weights, manifest.preprocessing.crop_size)
    return LoadedModel(manifest=manifest, network=network)
