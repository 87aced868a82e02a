"""The trainable DDA network: the engine's DINOv2 ViT, frozen, with LoRA on every
attn.qkv, attn.proj, mlp.fc1 and mlp.fc2, and a trainable linear head.

The reference code never hands the head to its optimizer (only LoRA trains); here the
head trains too. Export merges LoRA into the weights, so inference runs the plain engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.imaging.preprocess import CROP_SIZE
from engine.model.arch import LORA_TARGETS, expected_shapes, infer_architecture
from engine.model.checkpoint import merge_lora, safe_torch_load
from engine.model.model_dir import load_model_dir
from engine.model.vit import DdaViT, build_network


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / rank) * B A x, with W and b frozen; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)

    def merged_weight(self) -> Tensor:
        return merge_lora(self.base.weight.detach(), self.lora_A.detach(), self.lora_B.detach(), self.scale)


class TrainableDDA(nn.Module):
    def __init__(self, network: DdaViT, rank: int = 8, alpha: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.rank, self.alpha = rank, alpha
        network.requires_grad_(False)
        for block in network.blocks:
            for target in LORA_TARGETS:
                parent_name, child = target.split(".")
                parent = getattr(block, parent_name)
                setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
        network.head.requires_grad_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(L2-normalised class-token features, logits)."""
        features = self.network.forward_features(x)
        return nn.functional.normalize(features, dim=-1), self.network.head(features).squeeze(-1)

    def trainable(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def trainable_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if "lora_" in k or k.startswith("network.head.")}

    def merged_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Weights in the engine's layout (`engine.model.arch.expected_shapes` order) with LoRA merged."""
        state = self.network.state_dict()
        modules = dict(self.network.named_modules())
        for name in expected_shapes(self.network.arch):
            module_name, _, leaf = name.rpartition(".")
            module = modules.get(module_name)
            if isinstance(module, LoRALinear):
                yield name, (module.merged_weight() if leaf == "weight" else module.base.bias.detach())
            else:
                yield name, state[name].detach()


def _network_from_backbone(state: Mapping[str, Tensor]) -> DdaViT:
    """A DdaViT from DINOv2 backbone weights (keys as in facebookresearch/dinov2), fresh head."""
    backbone = {k: v.float() for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in backbone:
        raise ValueError("DINOv2 checkpoints with register tokens are not the DDA backbone")
    arch = infer_architecture({k: tuple(v.shape) for k, v in backbone.items()})
    head = nn.Linear(arch.width, 1)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    backbone["head.weight"], backbone["head.bias"] = head.weight.detach(), head.bias.detach()
    return build_network(arch, backbone, CROP_SIZE)


def load_initial(spec: str) -> tuple[DdaViT, str]:
    """From a DDA model directory (continue training) or a DINOv2 .pth backbone (from scratch)."""
    path = Path(spec)
    if path.is_dir():
        loaded = load_model_dir(path)
        return loaded.network, loaded.manifest.version
    state = safe_torch_load(path)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return _network_from_backbone(state), f"dinov2:{path.name}"
