"""Run the network on batches of uint8 crops with PyTorch.

The runner owns device placement, precision and batching; it knows nothing of files,
URLs or verdicts. fp32 is the reference's numerics; bf16/fp16 are the fast modes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from engine.imaging.preprocess import Preprocessing, normalize
from engine.model.vit import DdaViT
from engine.runners.contract import Precision, StartingRunner, check_crops, run_in_chunks

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def buckets_for(max_batch: int) -> tuple[int, ...]:
    """Batch sizes a compiled network is specialised for: 8, 16, 32, ... up to max_batch."""
    sizes = {max_batch}
    size = 8
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class TorchRunner(StartingRunner):
    """Logits for [N, S, S, 3] uint8 crops, computed in chunks of at most `max_batch`.

    With `compile=True` the network goes through `torch.compile` (on CUDA with CUDA graphs,
    mode "reduce-overhead") and every chunk is padded on the device to the next of a few
    bucket sizes (`buckets_for`), so a handful of shapes is ever compiled and a batch of 9
    does not pay for 128.

    `start` launches a chunk and returns a waiter, so a feeder can fill its other host
    buffer (`host_buffer`: page-locked on CUDA, so the copy to the GPU is asynchronous)
    while this one computes; on the CPU it computes before returning.
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
        self.buckets = buckets_for(max_batch) if compile else ()
        self._cuda = self.device.type == "cuda"
        self.asynchronous = self._cuda  # `start` returns before the batch is computed
        self._forward: Callable[[Tensor], Tensor] = self.network
        if compile:
            mode = "reduce-overhead" if self._cuda else None
            self._forward = torch.compile(self.network, mode=mode, dynamic=False)

    @torch.inference_mode()
    def logits(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N] logits for uint8 [N, S, S, 3] crops."""
        check_crops(crops, self.preprocessing.crop_size)
        return run_in_chunks(crops, self.max_batch, lambda chunk: self.start(chunk)())

    def warm_up(self) -> tuple[int, ...]:
        """Compile every bucket now (a first batch of each size would otherwise pay for it)."""
        size = self.preprocessing.crop_size
        for bucket in self.buckets:
            self.logits(np.zeros((bucket, size, size, 3), np.uint8))
        return self.buckets

    def host_buffer(self, n: int) -> np.ndarray:
        """A reusable uint8 [n, S, S, 3] host buffer; page-locked on CUDA."""
        size = self.preprocessing.crop_size
        return torch.empty((n, size, size, 3), dtype=torch.uint8, pin_memory=self._cuda).numpy()

    @torch.inference_mode()
    def start(self, chunk: np.ndarray) -> Callable[[], np.ndarray]:
        """Launch at most `max_batch` crops; the waiter returns their float32 logits.

        `chunk` must stay unchanged until the waiter has returned (the copy to the GPU may
        still be reading it)."""
        n = len(chunk)
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"a chunk holds 1..{self.max_batch} crops, got {n}")
        host = torch.from_numpy(np.ascontiguousarray(chunk))
        if self._cuda and not host.is_pinned():
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True)
        bucket = next((b for b in self.buckets if b >= n), n)
        if bucket > n:
            x = torch.cat([x, x.new_zeros((bucket - n, *x.shape[1:]))])
        out = self._forward(normalize(x, self.preprocessing).to(self.dtype))[:n].float()
        if not self._cuda:
            result = out.numpy()
            return lambda: result
        landed = torch.empty(n, dtype=torch.float32, pin_memory=True)
        landed.copy_(out, non_blocking=True)
        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        done.record()

        def wait() -> np.ndarray:
            done.synchronize()
            return landed.numpy()

        return wait
