"""A model directory: `model.safetensors` (merged fp32 weights) + `manifest.json`.

The manifest is what every consumer (scan, worker, ONNX export, training export) reads
to know the architecture, the preprocessing, the decision threshold and the version
string that namespaces cached verdicts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from engine.arch import Architecture, expected_shapes
from engine.preprocess import Preprocessing
from engine.safetensors_stream import write_streamed
from engine.vit import DdaViT, build_network

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "dda-model/1"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    architecture: Architecture
    preprocessing: Preprocessing
    threshold: float
    source: dict[str, Any]

    @property
    def threshold_logit(self) -> float:
        """The threshold as a logit, so labels never depend on sigmoid rounding."""
        return math.log(self.threshold / (1.0 - self.threshold))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture.to_json(),
            "preprocessing": self.preprocessing.to_json(),
            "threshold": self.threshold,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ModelDirError(f"manifest format is {data.get('format')!r}, expected {FORMAT!r}")
        threshold = float(data["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ModelDirError(f"threshold {threshold} is not strictly between 0 and 1")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            architecture=Architecture.from_json(data["architecture"]),
            preprocessing=Preprocessing.from_json(data["preprocessing"]),
            threshold=threshold,
            source=dict(data.get("source", {})),
        )


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


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelDirError(f"{path} is not a model directory: {MANIFEST} not found")
    try:
        return Manifest.from_json(json.loads(manifest_path.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{manifest_path} is malformed: {exc}") from exc


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
