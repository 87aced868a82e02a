"""What every inference backend offers the rest of the product, with no backend's imports.

torch, TensorRT and onnxruntime stay out of this module, so code that only hands crops to a
runner (a worker feeding a shared engine process, say) never loads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from engine.imaging.preprocess import Preprocessing

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
PRECISION_CHOICES = ("auto", *PRECISIONS)  # auto: bf16 on cuda, fp32 (the reference's numerics) on cpu
DEVICES = ("cpu", "cuda")
Backend = Literal["auto", "torch", "tensorrt"]  # auto: a TensorRT engine built for this GPU when there is one, else torch
BACKENDS: tuple[Backend, ...] = get_args(Backend)


Waiter = Callable[[], np.ndarray]


class Runner(Protocol):
    """What the product needs from a backend: logits for uint8 crops, in chunks it can take.
    Backends subclass it (and inherit `warm_up`); anything with these members is one."""

    preprocessing: Preprocessing
    max_batch: int

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N] logits for uint8 [N, S, S, 3] crops (any N: chunked as the backend needs)."""
        ...

    def warm_up(self) -> tuple[int, ...]:
        """Do now what a first batch would pay for (torch.compile's buckets); the batch sizes prepared."""
        return ()


@runtime_checkable
class StartingRunner(Runner, Protocol):
    """A runner that launches a batch and is waited on later, so the engine process copies the next
    batch while this one computes (`TorchRunner` on CUDA, where `asynchronous` is true)."""

    asynchronous: bool

    def host_buffer(self, n: int) -> np.ndarray:
        """A reusable uint8 [n, S, S, 3] buffer to launch from (page-locked on CUDA)."""
        ...

    def start(self, crops: np.ndarray) -> Waiter:
        """Launch at most `max_batch` crops; `crops` must stay unchanged until the waiter returns."""
        ...


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


def warm_up(runner: Runner, log: Callable[[str], None]) -> None:
    """A compiled runner compiles each of its batch buckets now, before it says it is ready."""
    started = time.monotonic()
    buckets = runner.warm_up()
    if buckets:
        log(f"compiled batch buckets {list(buckets)} in {time.monotonic() - started:.1f} s")
