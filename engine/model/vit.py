"""The ViT + linear head the detectors run, written for inference.

Pre-norm blocks (with LayerScale in DINOv2, DDA's backbone; without in timm's ViT, the
Community Forensics detector's), exact GELU, PyTorch SDPA attention, one class token and no
register tokens; the logit comes from the class token after the final LayerNorm. The
positional table is stored at its training grid (37x37 for DINOv2) and resampled once, at
construction, for the fixed input size (timm's 384 px table is already at its grid).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.arch import Architecture

# DINOv2's historical kludge: the resampling is asked for by scale factor (grid + 0.1) / M
# rather than by output size. Both yield the same shape but different numbers.
POS_INTERPOLATE_OFFSET = 0.1


def resample_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """Resample a [1, 1 + M*M, D] table to [1, 1 + grid*grid, D] the way DINOv2 does."""
    table = pos_embed.float()
    cls_row, patch_rows = table[:, :1], table[:, 1:]
    side = int(round(patch_rows.shape[1] ** 0.5))
    if side == grid:
        return table
    dim = table.shape[-1]
    scale = (grid + POS_INTERPOLATE_OFFSET) / side
    image = patch_rows.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(image, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if resized.shape[-2:] != (grid, grid):
        raise ValueError(f"positional resampling gave {tuple(resized.shape[-2:])}, expected {grid}x{grid}")
    return torch.cat((cls_row, resized.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)), dim=1)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(arch.width, eps=arch.layernorm_eps)
        self.attn = Attention(arch.width, arch.heads)
        self.ls1: nn.Module = LayerScale(arch.width) if arch.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(arch.width, eps=arch.layernorm_eps)
        self.mlp = Mlp(arch.width, arch.mlp_hidden)
        self.ls2: nn.Module = LayerScale(arch.width) if arch.layerscale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, arch.width, kernel_size=arch.patch_size, stride=arch.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DdaViT(nn.Module):
    """Backbone + head. `forward` returns one logit per image: sigmoid = P(AI-generated)."""

    def __init__(self, arch: Architecture, image_size: int) -> None:
        super().__init__()
        if image_size % arch.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {arch.patch_size}")
        self.arch = arch
        self.image_size = image_size
        self.grid = image_size // arch.patch_size
        self.patch_embed = PatchEmbed(arch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.pos_grid * arch.pos_grid + 1, arch.width))
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width, eps=arch.layernorm_eps)
        self.head = nn.Linear(arch.width, 1)
        self.register_buffer("pos_table", torch.zeros(1, self.grid * self.grid + 1, arch.width), persistent=False)

    def refresh_pos_table(self) -> None:
        """Recompute the input-size positional table; call after the weights change."""
        with torch.no_grad():
            table = resample_pos_embed(self.pos_embed.detach(), self.grid)
        self.pos_table = table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """Class token after the final LayerNorm, [B, width]."""
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.pos_table
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)).squeeze(-1)


def build_network(arch: Architecture, weights: Mapping[str, Tensor], image_size: int) -> DdaViT:
    """Construct the network without a random init and take `weights` as its parameters."""
    with torch.device("meta"):
        net = DdaViT(arch, image_size)
    net.load_state_dict(dict(weights), strict=True, assign=True)
    net.refresh_pos_table()
    return net.eval()
