"""TensorRT engine files and their sidecars: which GPU and TensorRT they were built for.

A serialized engine only runs on the GPU model, compute capability and TensorRT version
that built it. The sidecar `<engine>.json` records those with the source model version,
so a mismatch is refused with a clear message instead of a crash deep in TensorRT, and
the worker can pick the right engine out of a model directory's `engines/` folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENGINES_SUBDIR = "engines"


@dataclass(frozen=True)
class GpuIdentity:
    gpu_name: str
    compute_capability: str
    tensorrt_version: str


@dataclass(frozen=True)
class EngineInfo:
    identity: GpuIdentity
    model_version: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    input_kind: str
    onnx_sha256: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("identity"))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineInfo:
        identity = GpuIdentity(data["gpu_name"], data["compute_capability"], data["tensorrt_version"])
        rest = {k: v for k, v in data.items() if k not in ("gpu_name", "compute_capability", "tensorrt_version")}
        return cls(identity=identity, **rest)


class EngineMismatch(RuntimeError):
    """The engine was built for another GPU, TensorRT version or model."""


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: Path, info: EngineInfo) -> None:
    sidecar_path(engine).write_text(json.dumps(info.to_json(), indent=2) + "\n")


def read_sidecar(engine: Path) -> EngineInfo:
    path = sidecar_path(engine)
    try:
        return EngineInfo.from_json(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise EngineMismatch(f"{engine}: no sidecar {path.name}; rebuild it with `dda build-engine`") from exc
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise EngineMismatch(f"{path} is malformed: {exc}") from exc


def check_compatible(info: EngineInfo, here: GpuIdentity, model_version: str | None = None) -> None:
    built = info.identity
    for field, want, got in (
        ("GPU", built.gpu_name, here.gpu_name),
        ("compute capability", built.compute_capability, here.compute_capability),
        ("TensorRT version", built.tensorrt_version, here.tensorrt_version),
    ):
        if want != got:
            raise EngineMismatch(f"engine was built for {field} {want!r}, this machine has {got!r}: build one here with `dda build-engine`")
    if model_version is not None and info.model_version != model_version:
        raise EngineMismatch(f"engine was built from model {info.model_version}, not {model_version}")


def engine_directories(model_dir: Path, engine_dir: Path | None = None) -> list[Path]:
    """Where engines are looked for: a writable engine directory first (a cache shared by the pods
    of one GPU type), then the model directory's own `engines/` (prebuilt, read-only)."""
    return ([engine_dir] if engine_dir is not None else []) + [model_dir / ENGINES_SUBDIR]


def find_engine(directories: Sequence[Path], here: GpuIdentity, model_version: str) -> Path | None:
    """The first engine in `directories` built for this GPU, TensorRT and model."""
    for directory in directories:
        for engine in sorted(directory.glob("*.engine")):
            try:
                check_compatible(read_sidecar(engine), here, model_version)
            except EngineMismatch:
                continue
            return engine
    return None


def cached_engine_name(info: EngineInfo) -> str:
    """File name of an engine in a shared engine directory: one per GPU type, TensorRT version and model."""
    key = f"{info.identity.gpu_name}-sm{info.identity.compute_capability}-trt{info.identity.tensorrt_version}-{info.model_version}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".engine"


def publish_engine(built: Path, directory: Path, info: EngineInfo) -> Path:
    """Move a finished engine (and its sidecar, first) into `directory` under its cache name.

    Renames within one filesystem are atomic, and the sidecar lands first, so a pod looking at
    a shared directory while another builds sees either no engine or a complete one."""
    final = directory / cached_engine_name(info)
    os.replace(sidecar_path(built), sidecar_path(final))
    os.replace(built, final)
    return final


def require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError("TensorRT is not installed: on a machine with an NVIDIA GPU, pip install '.[gpu]'") from exc
    return trt


def gpu_identity(device_index: int = 0) -> GpuIdentity:
    """Name and compute capability of the CUDA device, with the TensorRT version in use."""
    trt = require_tensorrt()
    import pycuda.driver as cuda

    cuda.init()
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    return GpuIdentity(gpu_name=device.name(), compute_capability=f"{major}.{minor}", tensorrt_version=trt.__version__)
