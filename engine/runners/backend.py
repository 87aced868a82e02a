"""Pick the inference backend: a TensorRT engine built for this GPU when one exists, else torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from engine.model.manifest import Manifest
from engine.model.model_dir import LoadedModel, load_model_dir
from engine.runners.contract import Backend, Precision, Runner
from engine.runners.engine_file import engine_directories, find_engine
from engine.runners.torch_runner import TorchRunner


def make_runner(
    loaded: LoadedModel,
    model_dir: Path,
    *,
    backend: Backend = "auto",
    device: str = "cpu",
    precision: Precision | Literal["auto"] = "fp32",
    max_batch: int = 16,
    compile: bool = False,
    engine_dir: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Runner:
    """Precision `auto` is bf16 on CUDA and fp32 (the reference's numerics) on the CPU.

    Backend `auto` uses TensorRT only on CUDA with TensorRT installed and a matching engine in
    `engine_dir` or `model_dir/engines/`; it says which backend it chose and why."""
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    directories = engine_directories(model_dir, engine_dir)
    if backend != "torch" and device == "cuda":
        try:
            from engine.runners.engine_file import gpu_identity
            from engine.runners.tensorrt_runner import TensorRTRunner

            engine = find_engine(directories, gpu_identity(), loaded.manifest.version)
        except ImportError as exc:
            engine, reason = None, f"TensorRT/pycuda not importable ({exc})"
        else:
            reason = f"no engine for this GPU in {' or '.join(map(str, directories))}"
        if engine is not None:
            log(f"backend: TensorRT engine {engine}")
            return TensorRTRunner(engine, loaded.manifest)
        if backend == "tensorrt":
            raise RuntimeError(f"--backend tensorrt: {reason}")
        log(f"backend: torch {precision} on {device} ({reason})")
    elif backend == "tensorrt":
        raise RuntimeError("--backend tensorrt needs --device cuda")
    else:
        log(f"backend: torch {precision} on {device}")
    return TorchRunner(loaded.network, loaded.manifest.preprocessing, device=device, precision=precision, max_batch=max_batch,
                       compile=compile)


def load_shadow(model: Path, served: Runner, *, device: str, precision: Precision | Literal["auto"], max_batch: int,
                log: Callable[[str], None]) -> tuple[Manifest, Runner] | None:
    """The shadow model (a candidate scored beside the served one) on torch, or None, said why,
    when it cannot score the served model's crops: a shadow's failure must never stop serving."""
    try:
        loaded = load_model_dir(model)
        if loaded.manifest.preprocessing != served.preprocessing:
            raise ValueError(f"its preprocessing {loaded.manifest.preprocessing} differs from the served model's "
                             f"{served.preprocessing}: it cannot score the same crops")
        return loaded.manifest, make_runner(loaded, model, backend="torch", device=device, precision=precision,
                                            max_batch=max_batch, engine_dir=None, compile=False, log=log)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:  # a ModelDirError is a ValueError
        log(f"shadow model {model} not loaded, serving without it: {exc}")
        return None


def load_second(model: Path, *, device: str, precision: Precision | Literal["auto"], max_batch: int,
                log: Callable[[str], None]) -> tuple[Manifest, Runner]:
    """An ensemble's second detector, on torch. Raises what the loader raises: unlike a shadow's,
    its answer is part of every verdict, so a worker must not serve without it."""
    loaded = load_model_dir(model)
    return loaded.manifest, make_runner(loaded, model, backend="torch", device=device, precision=precision,
                                        max_batch=max_batch, log=log)
