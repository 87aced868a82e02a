"""Logits from the authors' own inference code, for comparison with `dda scan`.

Run it with an interpreter that has torch + torchvision, pointing at checkouts of
facebookresearch/dinov2 and roy-ch/Dual-Data-Alignment (not vendored here). It builds the
authors' `DINOv2ModelWithLoRA("dinov2_vitl14", lora_rank=8, lora_alpha=1)` with the DINOv2
hub entry taken from the local checkout (no download, no pretrained weights), loads the
checkpoint's "model" entry strictly, and applies the authors' transform
(CenterCrop(336), ToTensor, CLIP Normalize) at fp32, batch 1. One JSON line per image.

    python tools/reference_logits.py --dinov2 DIR --dda DIR --checkpoint CKPT IMAGE...
"""

from __future__ import annotations

import argparse
import sys

from reference_common import print_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dinov2", required=True, help="checkout of facebookresearch/dinov2")
    parser.add_argument("--dda", required=True, help="checkout of roy-ch/Dual-Data-Alignment")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()

    import torch
    from torchvision import transforms

    hub_load = torch.hub.load

    def local_hub(_repo: str, name: str, **_kwargs: object) -> torch.nn.Module:
        return hub_load(args.dinov2, name, source="local", pretrained=False)

    torch.hub.load = local_hub
    sys.path.insert(0, f"{args.dda}/Inference")
    from models.dinov2_models_lora import DINOv2ModelWithLoRA  # type: ignore[import-not-found]

    model = DINOv2ModelWithLoRA(name="dinov2_vitl14", lora_rank=8, lora_alpha=1, lora_targets=None)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"], strict=True)
    model.eval()
    transform = transforms.Compose([
        transforms.CenterCrop(336),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
    ])
    print_logits(model, transform, args.images)


if __name__ == "__main__":
    main()
