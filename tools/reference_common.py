"""What both reference scripts do once they hold the authors' model and transform: one JSON line an image.

Imported from the scripts' own folder, in the reference environment (torch and Pillow there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any


def print_logits(model: Callable[[Any], Any], transform: Callable[[Any], Any], paths: Sequence[str]) -> None:
    """Each image opened and converted to RGB by Pillow, transformed, scored alone (batch 1) without gradients."""
    import torch
    from PIL import Image

    for path in paths:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            logit = model(transform(image).unsqueeze(0)).flatten()[0].item()
        print(json.dumps({"input": path, "size": image.size, "logit": logit}), flush=True)
