"""What every inference backend offers the rest of the product, with no backend's imports.

torch, TensorRT and onnxruntime stay out of this module, so code that only hands crops to a
runner (a worker feeding a shared engine process, say) never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from engine.preprocess import Preprocessing

Precision = Literal["fp32", "bf16", "fp16"]


class Runner(Protocol):
    """What the detector needs from a backend: logits for uint8 crops, in chunks it can take."""

    preprocessing: Preprocessing
    max_batch: int

    def logits(self, crops: np.ndarray) -> np.ndarray: ...


def check_crops(crops: np.ndarray, size: int) -> None:
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, {size}, {size}, 3] crops, got {crops.dtype} {crops.shape}")


def run_in_chunks(crops: np.ndarray, max_batch: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float32 [N] logits, calling `run` on consecutive chunks of at most `max_batch` crops."""
    out = np.empty(len(crops), dtype=np.float32)
    for start in range(0, len(crops), max_batch):
        chunk = crops[start : start + max_batch]
        out[start : start + len(chunk)] = run(chunk)
    return out


class EngineLost(RuntimeError):
    """The process that runs the model is gone or stopped answering.

    Not one batch's failure: no later batch can be scored either, so the work in flight must
    stay unanswered (and uncommitted) and the worker must stop."""
