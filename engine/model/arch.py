"""Architecture of the ViTs the engine runs (DDA's DINOv2, Community Forensics' timm ViT), derived from weight shapes.

The checkpoint carries no config, so every size is read off a tensor: width from the
class token, depth from the block indices, heads from the DINOv2 family's fixed head
dimension of 64, patch size from the patch-embedding kernel, the stored positional grid
from the positional table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

HEAD_DIM = 64
LAYERNORM_EPS = 1e-6
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


class ArchitectureError(ValueError):
    """The weights do not describe a DINOv2 ViT this engine can run."""


@dataclass(frozen=True)
class Architecture:
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    patch_size: int
    pos_grid: int
    layernorm_eps: float = LAYERNORM_EPS
    layerscale: bool = True  # DINOv2 (DDA) scales each branch; timm's ViTs (Community Forensics) do not

    def to_json(self) -> dict[str, Any]:
        return {"type": "dinov2_vit", **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Architecture:
        fields = {k: v for k, v in data.items() if k != "type"}
        return cls(**fields)


def heads_for_width(width: int) -> int:
    """DINOv2 keeps the head dimension at 64 across S/B/L/g, so heads = width / 64."""
    if width <= 0 or width % HEAD_DIM:
        raise ArchitectureError(f"width {width} is not a multiple of the head dimension {HEAD_DIM}")
    return width // HEAD_DIM


def grid_side(tokens_without_cls: int) -> int:
    side = math.isqrt(tokens_without_cls)
    if side * side != tokens_without_cls:
        raise ArchitectureError(f"positional table has {tokens_without_cls} patch rows, not a square grid")
    return side


def infer_architecture(shapes: Mapping[str, Sequence[int]]) -> Architecture:
    """Size the network from a backbone state dict's shapes (keys without any prefix)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in shapes:
            raise ArchitectureError(f"missing key {key!r}")
    width = int(shapes["cls_token"][-1])
    depth = 1 + max((int(m.group(1)) for k in shapes if (m := _BLOCK_INDEX.match(k))), default=-1)
    if depth == 0:
        raise ArchitectureError("no transformer blocks found (keys 'blocks.<i>.*')")
    patch_kernel = shapes["patch_embed.proj.weight"]
    fc1 = shapes.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise ArchitectureError("missing key 'blocks.0.mlp.fc1.weight'")
    return Architecture(
        width=width,
        depth=depth,
        heads=heads_for_width(width),
        mlp_hidden=int(fc1[0]),
        patch_size=int(patch_kernel[-1]),
        pos_grid=grid_side(int(shapes["pos_embed"][1]) - 1),
        layerscale="blocks.0.ls1.gamma" in shapes,
    )


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every tensor of the merged backbone + head, in the order they are written."""
    d, h, p = arch.width, arch.mlp_hidden, arch.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, arch.pos_grid * arch.pos_grid + 1, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
    }
    linear = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (h, d), "mlp.fc2": (d, h)}
    for i in range(arch.depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[b + norm + ".weight"] = (d,)
            shapes[b + norm + ".bias"] = (d,)
        if arch.layerscale:
            shapes[b + "ls1.gamma"] = (d,)
            shapes[b + "ls2.gamma"] = (d,)
        for name, (out_f, in_f) in linear.items():
            shapes[b + name + ".weight"] = (out_f, in_f)
            shapes[b + name + ".bias"] = (out_f,)
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    shapes["head.weight"] = (1, d)
    shapes["head.bias"] = (1,)
    return shapes
