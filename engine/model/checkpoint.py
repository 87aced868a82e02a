"""Import the authors' released DDA checkpoint into a model directory.

Layout of `DDA_ckpt.pth`: a torch pickle holding a dict whose "model" entry is the state
dict of the authors' LoRA-wrapped DINOv2: backbone under `base_model.model.`, each of the
four linear layers per block split into `.original_layer.{weight,bias}` and
`.lora.lora_{A,B}`, head under `base_model.fc.`. LoRA is merged here (W + alpha/rank *
B @ A), so inference runs a plain ViT.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from engine.imaging.preprocess import Preprocessing
from engine.model.arch import LORA_TARGETS, Architecture, ArchitectureError, expected_shapes, infer_architecture
from engine.model.manifest import Manifest
from engine.model.model_dir import write_model_dir

BACKBONE = "base_model.model."
HEAD = "base_model.fc."
IGNORED = {BACKBONE + "mask_token"}  # only used by DINOv2's masked pre-training
DEFAULT_LORA_ALPHA = 1.0
DEFAULT_THRESHOLD = 0.5


class CheckpointError(ValueError):
    """The file is not a readable checkpoint in the official DDA layout."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_torch_load(path: Path, map_location: str = "cpu", mmap: bool = True) -> object:
    """A torch file read without executing code (tensors and plain containers only; a pickle that
    would run code is refused). Memory-mapped where the format allows, so memory stays near 1x;
    pass mmap=False for a file that will be overwritten while its tensors are in use."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head!r}, not a zip archive or a pickle)")
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy non-zip pickles cannot be mapped
                raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to unpickle (only tensors and plain containers are allowed): {exc}") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {exc}") from exc


def state_dict_with(obj: object, prefix: str, path: Path, expected: str) -> Mapping[str, torch.Tensor]:
    """The state dict a loaded file holds (itself, or its "model" entry), if any of its keys start with `prefix`."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not any(isinstance(k, str) and k.startswith(prefix) for k in obj):
        raise CheckpointError(f"{path}: no state dict with {prefix!r} keys ({expected})")
    return obj


def _load_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    return state_dict_with(safe_torch_load(path), BACKBONE, path, "expected a dict with a 'model' entry")


def _source_keys(name: str) -> list[str]:
    """Source keys that make up one merged tensor, in the order they are checked."""
    if name.startswith("head."):
        return [HEAD + name[len("head.") :]]
    module, _, leaf = name.rpartition(".")
    if any(module.endswith(t) for t in LORA_TARGETS):
        base = BACKBONE + module
        if leaf == "weight":
            return [f"{base}.original_layer.weight", f"{base}.lora.lora_A", f"{base}.lora.lora_B"]
        return [f"{base}.original_layer.{leaf}"]
    return [BACKBONE + name]


def _backbone_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes keyed the way `infer_architecture` reads them."""
    shapes = {}
    for key, tensor in state.items():
        if key.startswith(BACKBONE):
            short = key[len(BACKBONE) :].replace(".original_layer.", ".")
            shapes[short] = tuple(tensor.shape)
    return shapes


def _lora_rank(state: Mapping[str, torch.Tensor]) -> int:
    key = f"{BACKBONE}blocks.0.attn.qkv.lora.lora_A"
    if key not in state:
        raise CheckpointError(f"missing key {key!r}")
    return int(state[key].shape[0])


def _check(state: Mapping[str, torch.Tensor], arch: Architecture, rank: int) -> None:
    """Fail on the first missing or mis-shaped key, in model order, then on unknown keys."""
    wanted: dict[str, tuple[int, ...]] = {}
    for name, shape in expected_shapes(arch).items():
        keys = _source_keys(name)
        wanted[keys[0]] = shape
        if len(keys) == 3:  # weight + lora_A [r, in] + lora_B [out, r]
            wanted[keys[1]] = (rank, shape[1])
            wanted[keys[2]] = (shape[0], rank)
    for key, shape in wanted.items():
        if key not in state:
            raise CheckpointError(f"missing key {key!r}")
        got = tuple(state[key].shape)
        if got != shape:
            raise CheckpointError(f"key {key!r} has shape {list(got)}, expected {list(shape)}")
    unknown = sorted(set(state) - wanted.keys() - IGNORED)
    if unknown:
        raise CheckpointError(f"unexpected key {unknown[0]!r} (and {len(unknown) - 1} more): not the DDA layout this engine runs")


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, accumulated in float64 and rounded once to float32."""
    merged = weight.double() + scale * (lora_b.double() @ lora_a.double())
    return merged.float()


def _merged_tensors(state: Mapping[str, torch.Tensor], arch: Architecture, scale: float) -> Iterator[tuple[str, torch.Tensor]]:
    for name in expected_shapes(arch):
        keys = _source_keys(name)
        if len(keys) == 3:
            yield name, merge_lora(state[keys[0]], state[keys[1]], state[keys[2]], scale)
        else:
            yield name, state[keys[0]].float()


def import_checkpoint(
    src: Path,
    dest: Path,
    *,
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    threshold: float = DEFAULT_THRESHOLD,
    source_uri: str | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    name: str = "dda",
    warning: str | None = None,
) -> Manifest:
    """Validate `src`, merge LoRA and write the model directory `dest` (version: `name`-digest)."""
    progress(f"hashing {src}")
    digest = sha256_file(src)
    progress("reading checkpoint (weights only, memory-mapped)")
    state = _load_state_dict(src)
    try:
        arch = infer_architecture(_backbone_shapes(state))
    except ArchitectureError as exc:
        raise CheckpointError(f"{src}: {exc}") from exc
    rank = _lora_rank(state)
    _check(state, arch, rank)
    manifest = Manifest(
        name=name,
        version=f"{name}-{digest[:12]}",
        architecture=arch,
        preprocessing=Preprocessing(),
        threshold=threshold,
        source={
            "file": src.name,
            "uri": source_uri or str(src),
            "sha256": digest,
            "lora": {"rank": rank, "alpha": lora_alpha, "merged_layers": arch.depth * len(LORA_TARGETS)},
        },
        warning=warning,
    )
    progress(f"merging LoRA (rank {rank}) into {arch.depth * len(LORA_TARGETS)} layers and writing {dest}")
    write_model_dir(dest, manifest, _merged_tensors(state, arch, lora_alpha / rank))
    return manifest
