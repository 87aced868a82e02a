from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model.arch import ArchitectureError, heads_for_width, infer_architecture
from engine.model.checkpoint import BACKBONE, _backbone_shapes
from engine.model.model_dir import LoadedModel
from engine.model.synthetic import VIT_L, random_official_state, tiny_architecture
from engine.model.vit import resample_pos_embed


@pytest.mark.parametrize(("width", "heads"), [(384, 6), (768, 12), (1024, 16), (1536, 24)])
def test_heads_come_from_head_dim_64(width: int, heads: int) -> None:
    assert heads_for_width(width) == heads


def test_width_not_multiple_of_64_is_refused() -> None:
    with pytest.raises(ArchitectureError, match="head dimension 64"):
        heads_for_width(1000)


def test_architecture_is_read_from_official_shapes() -> None:
    arch = tiny_architecture(depth=3, heads=2, pos_grid=5)
    assert infer_architecture(_backbone_shapes(random_official_state(arch))) == arch


def test_vit_l_sizes() -> None:
    assert (VIT_L.width, VIT_L.depth, VIT_L.heads, VIT_L.mlp_hidden, VIT_L.pos_grid) == (1024, 24, 16, 4096, 37)


def test_positional_table_uses_scale_factor_with_offset() -> None:
    table = torch.randn(1, 1 + 37 * 37, 16, generator=torch.Generator().manual_seed(0))
    out = resample_pos_embed(table, 24)
    assert out.shape == (1, 577, 16)
    assert torch.equal(out[:, 0], table[:, 0])
    grid = table[:, 1:].reshape(1, 37, 37, 16).permute(0, 3, 1, 2)
    by_scale = F.interpolate(grid, scale_factor=(24.1 / 37, 24.1 / 37), mode="bicubic", antialias=False)
    assert torch.equal(out[0, 1:], by_scale.permute(0, 2, 3, 1).reshape(576, 16))
    by_size = F.interpolate(grid, size=(24, 24), mode="bicubic", antialias=False).permute(0, 2, 3, 1).reshape(576, 16)
    assert (out[0, 1:] - by_size).abs().max() > 1e-3  # the two calls really differ


def lora_forward_logits(state: dict[str, torch.Tensor], model: LoadedModel, x: torch.Tensor, scale: float) -> torch.Tensor:
    """The unmerged forward: base weights plus the LoRA branch computed beside them."""
    net = model.network
    hooks = []
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "head":
                module.weight.copy_(state[f"{BACKBONE}{name}.original_layer.weight"])
                a = state[f"{BACKBONE}{name}.lora.lora_A"]
                b = state[f"{BACKBONE}{name}.lora.lora_B"]
                hooks.append(module.register_forward_hook(lambda _m, inp, out, a=a, b=b: out + scale * (inp[0] @ a.T) @ b.T))
        try:
            return net(x)
        finally:
            for h in hooks:
                h.remove()


def test_merged_lora_equals_unmerged_forward(tiny_model: LoadedModel) -> None:
    state = random_official_state(tiny_model.manifest.architecture, rank=8, seed=3)  # the fixture's checkpoint
    x = torch.randn(3, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        merged = tiny_model.network(x)
    unmerged = lora_forward_logits(state, tiny_model, x, scale=1.0 / 8)
    assert torch.allclose(merged, unmerged, atol=1e-5), (merged, unmerged)
    base_only = lora_forward_logits(state, tiny_model, x, scale=0.0)
    assert (base_only - merged).abs().max() > 1e-3  # LoRA actually changes the output
