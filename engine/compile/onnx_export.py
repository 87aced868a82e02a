"""Export a model directory to ONNX for onnxruntime and TensorRT.

Opset 18 through PyTorch's torch.export-based exporter: LayerNorm stays one native
LayerNormalization node (TensorRT can then keep it in fp32), the batch dimension is
dynamic, the crop size fixed. With `uint8_input` the graph starts from the uint8 NHWC
crops the worker already holds and does the reference normalisation itself, so a quarter
of the bytes cross to the GPU. The manifest is stored in the model's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.imaging.preprocess import Preprocessing, normalize
from engine.model.model_dir import LoadedModel
from engine.runners.onnx_format import INPUT_FLOAT, INPUT_UINT8, META_INPUT, META_MANIFEST

OPSET = 18


class _FromUint8(nn.Module):
    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing

    def forward(self, crops: Tensor) -> Tensor:
        return self.network(normalize(crops, self.preprocessing))


def export_onnx(loaded: LoadedModel, output: Path, *, uint8_input: bool = False) -> None:
    """Write `output` (one file; weights inline below protobuf's 2 GB limit) and check it."""
    import onnx

    pre = loaded.manifest.preprocessing
    size = pre.crop_size
    network = loaded.network.float().eval()
    if uint8_input:
        module: nn.Module = _FromUint8(network, pre).eval()
        example, name = torch.zeros(2, size, size, 3, dtype=torch.uint8), "crops"
    else:
        module, example, name = network, torch.zeros(2, 3, size, size), "pixels"
    batch = torch.export.Dim("batch", min=1, max=4096)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module, (example,), str(output), dynamo=True, opset_version=OPSET, input_names=[name],
            output_names=["logit"], dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    model = onnx.load(str(output))
    del model.metadata_props[:]
    for key, value in {
        META_MANIFEST: json.dumps(loaded.manifest.to_json()),
        META_INPUT: INPUT_UINT8 if uint8_input else INPUT_FLOAT,
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(output))
    onnx.checker.check_model(str(output), full_check=True)
