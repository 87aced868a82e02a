"""Build a TensorRT engine from an exported ONNX file, on the GPU it will run on.

Imports of tensorrt and pycuda are deferred to call time: neither can be installed on
CPU-only machines, and nothing else in the project needs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.imaging.preprocess import Preprocessing, center_crop
from engine.model.checkpoint import sha256_file
from engine.runners.engine_file import EngineInfo, gpu_identity, require_tensorrt, write_sidecar
from engine.runners.onnx_format import INPUT_UINT8, META_INPUT, META_MANIFEST, input_shape, model_input

PRECISIONS = ("fp16", "bf16", "fp8", "int8")


class BuildError(RuntimeError):
    """The engine could not be built; the message says what to change."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 128
    calibration_dir: Path | None = None
    timing_cache: Path | None = None
    workspace_gib: float = 8.0
    device_index: int = 0

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise BuildError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise BuildError(f"need 1 <= min <= opt <= max batch, got {self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.precision == "int8" and self.calibration_dir is None:
            raise BuildError("int8 needs --calibration-dir: a folder of representative images")


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if META_MANIFEST not in meta:
        raise BuildError(f"{path} has no {META_MANIFEST} metadata: export it with `dda export-onnx`")
    meta["has_qdq"] = str(any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node))
    return meta


def calibration_batches(folder: Path, pre: Preprocessing, uint8_input: bool, batch: int) -> list[np.ndarray]:
    """Centre crops of every decodable image in `folder`, in the engine's input layout."""
    from engine.imaging.decode import decode_folder

    crops = [center_crop(pixels, pre.crop_size) for _, pixels in decode_folder(folder)]
    if not crops:
        raise BuildError(f"no decodable images in {folder} for calibration")
    stacked = model_input(np.stack(crops), pre, uint8_input)
    full = [np.ascontiguousarray(stacked[i : i + batch]) for i in range(0, len(stacked) - batch + 1, batch)]
    return full or [np.ascontiguousarray(stacked)]  # fewer images than one batch: calibrate on them all


def _make_calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path) -> Any:
    import pycuda.driver as cuda

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]  # trt is Any: TensorRT has no stubs
        def __init__(self) -> None:
            super().__init__()
            self.batches = iter(batches)
            self.device = cuda.mem_alloc(batches[0].nbytes)

        def get_batch_size(self) -> int:
            return len(batches[0])

        def get_batch(self, _names: list[str]) -> list[int] | None:
            chunk = next(self.batches, None)
            if chunk is None:
                return None
            cuda.memcpy_htod(self.device, chunk)
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_path.write_bytes(cache)

    return Calibrator()


def build_engine(onnx_path: Path, output: Path, options: BuildOptions, log: Callable[[str], None] = lambda _m: None) -> EngineInfo:
    """Parse, configure one optimisation profile, build, serialise; write the sidecar."""
    options.validate()
    meta = onnx_metadata(onnx_path)
    manifest = json.loads(meta[META_MANIFEST])
    uint8_input = meta.get(META_INPUT) == INPUT_UINT8
    if options.precision == "fp8" and meta["has_qdq"] != "True":
        raise BuildError(
            "fp8 engines need an ONNX with FP8 Quantize/Dequantize nodes (explicit quantization, e.g. from "
            "NVIDIA ModelOpt); TensorRT does not calibrate fp8 itself. Use fp16, bf16 or int8 here."
        )
    trt = require_tensorrt()
    identity = gpu_identity(options.device_index)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    flag = {"fp16": trt.BuilderFlag.FP16, "bf16": trt.BuilderFlag.BF16, "fp8": trt.BuilderFlag.FP8, "int8": trt.BuilderFlag.INT8}
    config.set_flag(flag[options.precision])
    if options.precision in ("fp8", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers without a quantized kernel fall back to fp16, not fp32
    # LayerNorm over 1024 channels overflows or loses precision in half types: keep it in fp32.
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)

    input_tensor = network.get_input(0)
    size = int(manifest["preprocessing"]["crop_size"])
    profile = builder.create_optimization_profile()
    profile.set_shape(input_tensor.name, *(input_shape(b, size, uint8_input)
                                           for b in (options.min_batch, options.opt_batch, options.max_batch)))
    config.add_optimization_profile(profile)

    if options.precision == "int8":
        assert options.calibration_dir is not None
        pre = Preprocessing.from_json(manifest["preprocessing"])
        batches = calibration_batches(options.calibration_dir, pre, uint8_input, min(options.opt_batch, 32))
        config.set_calibration_profile(profile)
        config.int8_calibrator = _make_calibrator(trt, batches, output.with_name(output.name + ".calib"))
        log(f"int8 calibration on {sum(len(b) for b in batches)} images")

    if options.timing_cache is not None:
        cached = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False)
        log(f"timing cache {options.timing_cache} ({len(cached)} bytes loaded)")

    log(f"building {options.precision} engine for {identity.gpu_name} (sm {identity.compute_capability}), batch "
        f"{options.min_batch}/{options.opt_batch}/{options.max_batch}; this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine; rerun with a larger --workspace-gib or see the log above")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(bytes(serialized))
    if options.timing_cache is not None:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    info = EngineInfo(
        identity=identity, model_version=manifest["version"], precision=options.precision,
        min_batch=options.min_batch, opt_batch=options.opt_batch, max_batch=options.max_batch,
        input_kind=meta.get(META_INPUT, ""), onnx_sha256=sha256_file(onnx_path),
    )
    write_sidecar(output, info)
    return info
