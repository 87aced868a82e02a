"""Run the network on batches of uint8 crops with PyTorch.

The runner owns device placement, precision and batching; it knows nothing of files,
URLs or verdicts. fp32 is the reference's numerics; bf16/fp16 are the fast modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from engine.preprocess import Preprocessing, normalize
from engine.vit import DdaViT

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


class TorchRunner:
    """Logits for [N, S, S, 3] uint8 crops, computed in chunks of at most `max_batch`.

    With `compile=True` the network goes through `torch.compile` (on CUDA with CUDA graphs,
    mode "reduce-overhead") and every chunk is padded to `max_batch`, so exactly one shape
    is ever compiled.
    """

    def __init__(
        self,
        network: DdaViT,
        preprocessing: Preprocessing,
        *,
        device: str = "cpu",
        precision: Precision = "fp32",
        max_batch: int = 32,
        compile: bool = False,
    ) -> None:
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but PyTorch sees no CUDA device")
        self.dtype = DTYPES[precision]
        self.precision = precision
        self.max_batch = max_batch
        self.preprocessing = preprocessing
        self.network = network.to(device=self.device, dtype=self.dtype).eval()
        self.network.refresh_pos_table()
        self.pad_to_max = compile
        self._forward: Callable[[Tensor], Tensor] = self.network
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._forward = torch.compile(self.network, mode=mode, dynamic=False)

    @torch.inference_mode()
    def logits(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N] logits for uint8 [N, S, S, 3] crops."""
        check_crops(crops, self.preprocessing.crop_size)
        return run_in_chunks(crops, self.max_batch, self._run_chunk)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if self.pad_to_max and n < self.max_batch:
            chunk = np.concatenate([chunk, np.zeros((self.max_batch - n, *chunk.shape[1:]), np.uint8)])
        host = torch.from_numpy(np.ascontiguousarray(chunk))
        if self.device.type == "cuda":
            host = host.pin_memory()
        x = normalize(host.to(self.device, non_blocking=True), self.preprocessing).to(self.dtype)
        return self._forward(x)[:n].float().cpu().numpy()
