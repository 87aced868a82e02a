"""Run a TensorRT engine with pycuda, behind the same interface as TorchRunner.

Two buffer sets, each with its own stream and execution context, alternate between
chunks: while one chunk computes, the next one's host-to-device copy is already queued,
and results are collected one chunk late. Host buffers are pinned, so copies are truly
asynchronous. Chunks larger than the profile's maximum are split; smaller than its
minimum, zero-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.manifest import Manifest
from engine.runners.contract import Runner, check_crops
from engine.runners.engine_file import check_compatible, gpu_identity, read_sidecar, require_tensorrt
from engine.runners.onnx_format import INPUT_UINT8, input_shape, model_input


@dataclass
class _Slot:
    context: Any
    stream: Any
    host_in: np.ndarray
    host_out: np.ndarray
    device_in: Any
    device_out: Any
    pending: tuple[int, int] | None = None  # (start, count) of the chunk in flight


class TensorRTRunner(Runner):
    def __init__(self, engine_path: Path, manifest: Manifest, device_index: int = 0) -> None:
        trt = require_tensorrt()
        import pycuda.driver as cuda

        info = read_sidecar(engine_path)
        check_compatible(info, gpu_identity(device_index), manifest.version)
        cuda.init()
        self._cuda = cuda
        self._cuda_context = cuda.Device(device_index).retain_primary_context()
        self._cuda_context.push()
        try:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self.output_name = next(n for n in names if n != self.input_name)
            self.preprocessing = manifest.preprocessing
            self.uint8_input = info.input_kind == INPUT_UINT8
            self.min_batch, self.max_batch = info.min_batch, info.max_batch
            size = self.preprocessing.crop_size
            in_shape = input_shape(self.max_batch, size, self.uint8_input)
            in_dtype = np.uint8 if self.uint8_input else np.float32
            self.slots = []
            for _ in range(2):
                host_in = cuda.pagelocked_empty(in_shape, in_dtype)
                host_out = cuda.pagelocked_empty((self.max_batch,), np.float32)
                self.slots.append(_Slot(self.engine.create_execution_context(), cuda.Stream(), host_in, host_out,
                                        cuda.mem_alloc(host_in.nbytes), cuda.mem_alloc(host_out.nbytes)))
        finally:
            self._cuda_context.pop()

    def _submit(self, slot: _Slot, chunk: np.ndarray, start: int) -> None:
        n = len(chunk)
        rows = max(n, self.min_batch)
        slot.host_in[:n] = model_input(chunk, self.preprocessing, self.uint8_input)
        slot.host_in[n:rows] = 0
        shape = (rows, *slot.host_in.shape[1:])
        self._cuda.memcpy_htod_async(slot.device_in, slot.host_in[:rows], slot.stream)
        slot.context.set_input_shape(self.input_name, shape)
        slot.context.set_tensor_address(self.input_name, int(slot.device_in))
        slot.context.set_tensor_address(self.output_name, int(slot.device_out))
        if not slot.context.execute_async_v3(slot.stream.handle):
            raise RuntimeError("TensorRT execution failed")
        self._cuda.memcpy_dtoh_async(slot.host_out[:rows], slot.device_out, slot.stream)
        slot.pending = (start, n)

    def _collect(self, slot: _Slot, out: np.ndarray) -> None:
        if slot.pending is None:
            return
        slot.stream.synchronize()
        start, n = slot.pending
        out[start : start + n] = slot.host_out[:n]
        slot.pending = None

    def logits(self, crops: np.ndarray) -> np.ndarray:
        check_crops(crops, self.preprocessing.crop_size)
        out = np.empty(len(crops), dtype=np.float32)
        self._cuda_context.push()
        try:
            for index, start in enumerate(range(0, len(crops), self.max_batch)):
                slot = self.slots[index % 2]
                self._collect(slot, out)  # this slot's previous chunk must be done before its buffers are reused
                self._submit(slot, crops[start : start + self.max_batch], start)
            for slot in self.slots:
                self._collect(slot, out)
        finally:
            self._cuda_context.pop()
        return out
