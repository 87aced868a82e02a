"""Engine sidecars and selection: pure logic, no TensorRT needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.compile.tensorrt_build import BuildError, BuildOptions, build_engine
from engine.model.model_dir import LoadedModel
from engine.runners.backend import make_runner
from engine.runners.engine_file import (
    EngineInfo,
    EngineMismatch,
    GpuIdentity,
    cached_engine_name,
    check_compatible,
    engine_directories,
    find_engine,
    publish_engine,
    read_sidecar,
    write_sidecar,
)
from engine.runners.torch_runner import TorchRunner

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.9.0")
L4 = GpuIdentity("NVIDIA L4", "8.9", "10.9.0")


def info(identity: GpuIdentity, model: str = "dda-abc") -> EngineInfo:
    return EngineInfo(identity, model, "fp16", 1, 64, 128, "uint8_nhwc", "0" * 64)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    engine = tmp_path / "a.engine"
    write_sidecar(engine, info(H100))
    assert read_sidecar(engine) == info(H100)


@pytest.mark.parametrize(
    ("here", "message"),
    [(L4, "GPU 'NVIDIA H100 80GB HBM3'"), (GpuIdentity(H100.gpu_name, "9.0", "10.10.0"), "TensorRT version '10.9.0'")],
)
def test_engines_for_another_gpu_or_tensorrt_are_refused(here: GpuIdentity, message: str) -> None:
    with pytest.raises(EngineMismatch, match=message):
        check_compatible(info(H100), here)


def test_engine_for_another_model_is_refused() -> None:
    with pytest.raises(EngineMismatch, match="built from model dda-abc"):
        check_compatible(info(H100), H100, "dda-other")


def test_find_engine_picks_the_one_for_this_gpu(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    engines.mkdir()
    for name, identity in (("a-l4.engine", L4), ("b-h100.engine", H100)):
        (engines / name).write_bytes(b"x")
        write_sidecar(engines / name, info(identity))
    (engines / "c-nosidecar.engine").write_bytes(b"x")
    assert find_engine([engines], H100, "dda-abc") == engines / "b-h100.engine"
    assert find_engine([engines], L4, "dda-abc") == engines / "a-l4.engine"
    assert find_engine([engines], H100, "dda-other") is None
    with pytest.raises(EngineMismatch, match="no sidecar"):
        read_sidecar(engines / "c-nosidecar.engine")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (BuildOptions(precision="int4"), "precision must be one of"),
        (BuildOptions(min_batch=8, opt_batch=4), "min <= opt <= max"),
        (BuildOptions(precision="int8"), "needs --calibration-dir"),
    ],
)
def test_build_options_are_checked_before_any_gpu_work(options: BuildOptions, message: str, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=message):
        build_engine(tmp_path / "x.onnx", tmp_path / "x.engine", options)


def test_fp8_without_quantize_nodes_is_refused(tmp_path: Path, tiny_model: LoadedModel) -> None:
    from engine.compile.onnx_export import export_onnx

    onnx_path = tmp_path / "m.onnx"
    export_onnx(tiny_model, onnx_path)
    with pytest.raises(BuildError, match="FP8 Quantize/Dequantize"):
        build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(precision="fp8"))


def test_auto_backend_on_cpu_is_torch(tiny_model: LoadedModel, tmp_path: Path) -> None:
    said: list[str] = []
    runner = make_runner(tiny_model, tmp_path, device="cpu", log=said.append)
    assert isinstance(runner, TorchRunner) and said == ["backend: torch fp32 on cpu"]
    with pytest.raises(RuntimeError, match="needs --device cuda"):
        make_runner(tiny_model, tmp_path, backend="tensorrt", device="cpu")


def test_a_shared_engine_directory_comes_first_and_publishing_is_whole(tmp_path: Path) -> None:
    """The chart's engine cache: built once per GPU type + TensorRT version, found by every pod."""
    model_dir, shared = tmp_path / "model", tmp_path / "shared"
    (model_dir / "engines").mkdir(parents=True)
    shared.mkdir()
    (model_dir / "engines" / "prebuilt.engine").write_bytes(b"old")
    write_sidecar(model_dir / "engines" / "prebuilt.engine", info(H100))
    directories = engine_directories(model_dir, shared)
    assert find_engine(directories, H100, "dda-abc") == model_dir / "engines" / "prebuilt.engine"

    building = shared / ".building-123.engine"  # a build in progress is not an engine yet (no sidecar)
    building.write_bytes(b"new")
    assert find_engine(directories, H100, "dda-abc") == model_dir / "engines" / "prebuilt.engine"
    write_sidecar(building, info(H100))
    final = publish_engine(building, shared, info(H100))
    assert final.parent == shared and final.name == cached_engine_name(info(H100)) and not building.exists()
    assert cached_engine_name(info(H100)) != cached_engine_name(info(L4))
    assert find_engine(directories, H100, "dda-abc") == final and final.read_bytes() == b"new"
    assert find_engine(directories, L4, "dda-abc") is None
