"""Logits from the Community Forensics authors' own model code, for comparison with this engine.

Run it with an interpreter that has torch, torchvision, timm and huggingface_hub, pointing at a
checkout of JeongsooP/Community-Forensics (not vendored here). It builds the authors'
`models.ViTClassifier(model_size="small", input_size=384, patch_size=16)` with timm's
pretrained download turned off, loads the checkpoint (their `vit.`-prefixed state dict, as
`model.safetensors` on the hub) strictly, and applies their test transform as their
`dataloader.get_transform(mode="test")` composes it for 384 px input: Resize(440),
CenterCrop(384), to [0, 1], ImageNet Normalize; fp32, batch 1. One JSON line per image.

    python tools/commfor_reference_logits.py --commfor DIR --checkpoint model.safetensors IMAGE...
"""

from __future__ import annotations

import argparse
import sys

from reference_common import print_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commfor", required=True, help="checkout of JeongsooP/Community-Forensics")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()

    import timm
    import torch
    from safetensors.torch import load_file
    from torchvision import transforms

    create_model = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        return create_model(name, pretrained=False, **kwargs)

    timm.create_model = offline
    sys.path.insert(0, args.commfor)
    from models import ViTClassifier  # type: ignore[import-not-found]

    model = ViTClassifier(model_size="small", input_size=384, patch_size=16, device="cpu")
    model.load_state_dict(load_file(args.checkpoint), strict=True)
    model.eval()
    transform = transforms.Compose([
        transforms.Resize(440),
        transforms.CenterCrop(384),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    print_logits(model, transform, args.images)


if __name__ == "__main__":
    main()
