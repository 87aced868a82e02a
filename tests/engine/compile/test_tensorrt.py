"""TensorRT build and run. These need tensorrt, pycuda and an NVIDIA GPU; elsewhere they skip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from engine.imaging.preprocess import center_crop
from engine.model.model_dir import LoadedModel, load_model_dir
from engine.runners.torch_runner import TorchRunner
from tests.images import photo


def _gpu_stack() -> bool:
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = pytest.mark.skipif(not _gpu_stack(), reason="needs tensorrt, pycuda and a CUDA GPU")


@pytest.mark.parametrize("uint8_input", [False, True])
def test_fp16_engine_matches_torch_and_handles_any_batch(tiny_model_dir: Path, tmp_path: Path, uint8_input: bool) -> None:
    from engine.compile.onnx_export import export_onnx
    from engine.compile.tensorrt_build import BuildOptions, build_engine
    from engine.runners.engine_file import gpu_identity, read_sidecar
    from engine.runners.tensorrt_runner import TensorRTRunner

    loaded: LoadedModel = load_model_dir(tiny_model_dir)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(loaded, onnx_path, uint8_input=uint8_input)
    engine = tmp_path / "engines" / "m.engine"
    build_engine(onnx_path, engine, BuildOptions(precision="fp16", min_batch=2, opt_batch=4, max_batch=4))
    assert read_sidecar(engine).identity == gpu_identity()

    crops = np.stack([center_crop(np.asarray(photo(500 + i, 400, seed=i))) for i in range(9)])
    ref = TorchRunner(load_model_dir(tiny_model_dir).network, loaded.manifest.preprocessing).logits(crops)
    runner = TensorRTRunner(engine, loaded.manifest)
    assert np.abs(runner.logits(crops) - ref).max() < 0.05  # 9 = 4 + 4 + 1 (padded to the profile's minimum 2)
    assert np.abs(runner.logits(crops[:1]) - ref[:1]).max() < 0.05
