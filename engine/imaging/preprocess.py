"""Pixels to model input, exactly as each detector's reference prepares them.

DDA's reference pads short sides with zeros to the crop size (left/top get the floor half),
then takes a centre crop with offsets rounded by Python's `round` (ties to even), with no
resize, and normalises with CLIP's statistics. Community Forensics' first scales the shorter
side to 440 px (torchvision's `Resize(440)` on a Pillow image: Pillow's bilinear filter, the
longer side truncated), then centre-crops 384 the same way and normalises with ImageNet's
statistics. Cropping here works on uint8 arrays so the bytes moved to the accelerator are a
quarter of float32; normalisation runs in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: decode processes never load it
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SIZE = 336
DDA_STEPS = ("convert_rgb", "zero_pad", "center_crop", "scale_1_255", "normalize")
RESIZED_STEPS = ("convert_rgb", "resize_shorter_bilinear", "center_crop", "scale_1_255", "normalize")


def _three_floats(values: Any, name: str) -> tuple[float, float, float]:
    """One value per RGB channel, from a manifest."""
    first, second, third = (float(v) for v in values)  # ValueError unless exactly three
    return first, second, third


@dataclass(frozen=True)
class Preprocessing:
    crop_size: int = CROP_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: int | None = None  # the shorter side scaled to this first (Pillow bilinear), or no resize (DDA)
    # Recorded so consumers can see what the references do not do.
    exif_transpose: bool = False
    pad_value: int = 0
    steps: tuple[str, ...] = field(default=DDA_STEPS)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"], data["steps"] = list(self.mean), list(self.std), list(self.steps)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessing:
        resize = data.get("resize")
        pre = cls(
            crop_size=int(data["crop_size"]),
            mean=_three_floats(data["mean"], "mean"),
            std=_three_floats(data["std"], "std"),
            resize=None if resize is None else int(resize),
            steps=DDA_STEPS if resize is None else RESIZED_STEPS,
        )
        if data.get("exif_transpose") or data.get("pad_value", 0) != 0 or (pre.resize is not None and pre.resize < pre.crop_size):
            raise ValueError("only the references' preprocessing (no EXIF transpose, zero pad, a resize no smaller than the crop) is supported")
        return pre

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The image the crops are cut from: scaled first where the reference scales."""
        return rgb if self.resize is None else resize_shorter(rgb, self.resize)


@dataclass(frozen=True)
class CropPlan:
    """Where the crop window sits: padding added before cropping, then the window's origin
    in padded coordinates."""

    pad_top: int
    pad_left: int
    top: int
    left: int
    padded_height: int
    padded_width: int


def plan_center_crop(height: int, width: int, size: int = CROP_SIZE) -> CropPlan:
    pad_h = max(size - height, 0)
    pad_w = max(size - width, 0)
    padded_h, padded_w = height + pad_h, width + pad_w
    return CropPlan(
        pad_top=pad_h // 2,
        pad_left=pad_w // 2,
        top=int(round((padded_h - size) / 2.0)),
        left=int(round((padded_w - size) / 2.0)),
        padded_height=padded_h,
        padded_width=padded_w,
    )


def _window(rgb: np.ndarray, plan: CropPlan, top: int, left: int, size: int) -> np.ndarray:
    """Cut a size x size window at (top, left) of the zero-padded image without padding it."""
    out = np.zeros((size, size, 3), dtype=np.uint8)
    src_top, src_left = top - plan.pad_top, left - plan.pad_left
    y0, x0 = max(src_top, 0), max(src_left, 0)
    y1 = min(src_top + size, rgb.shape[0])
    x1 = min(src_left + size, rgb.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - src_top : y1 - src_top, x0 - src_left : x1 - src_left] = rgb[y0:y1, x0:x1]
    return out


def resized_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) with the shorter side `side` and the longer truncated, as torchvision sizes it."""
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


def resize_shorter(rgb: np.ndarray, side: int) -> np.ndarray:
    """Scale so the shorter side is `side`, with Pillow's bilinear filter (antialiased when shrinking)."""
    from PIL import Image

    _check_rgb(rgb)
    height, width = resized_shape(rgb.shape[0], rgb.shape[1], side)
    if (height, width) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")


def center_crop(rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The reference's single view: [size, size, 3] uint8."""
    _check_rgb(rgb)
    plan = plan_center_crop(rgb.shape[0], rgb.shape[1], size)
    return _window(rgb, plan, plan.top, plan.left, size)


def five_crops(rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Centre + four corners of the padded image, [5, size, size, 3] uint8.

    For photos far larger than the crop the single centre view sees a tiny part of the
    scene; averaging logits over corners too is what B-Free does.
    """
    _check_rgb(rgb)
    plan = plan_center_crop(rgb.shape[0], rgb.shape[1], size)
    bottom, right = plan.padded_height - size, plan.padded_width - size
    origins = [(plan.top, plan.left), (0, 0), (0, right), (bottom, 0), (bottom, right)]
    return np.stack([_window(rgb, plan, top, left, size) for top, left in origins])


def views(rgb: np.ndarray, crops: int, size: int = CROP_SIZE) -> np.ndarray:
    """[crops, size, size, 3] uint8 for crops in {1, 5}."""
    if crops == 1:
        return center_crop(rgb, size)[None]
    if crops == 5:
        return five_crops(rgb, size)
    raise ValueError(f"crops must be 1 or 5, got {crops}")


def normalize(batch: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], as ToTensor + Normalize compute it."""
    import torch

    x = batch.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std)
