"""The exported model's input and metadata: what `dda export-onnx` writes and the ONNX and TensorRT
runners read, owned here so that running never imports the build."""

from __future__ import annotations

import numpy as np
import torch

from engine.imaging.preprocess import Preprocessing, normalize

META_MANIFEST = "dda.manifest"
META_INPUT = "dda.input"
INPUT_UINT8 = "uint8_nhwc"
INPUT_FLOAT = "float32_nchw_normalized"


def input_shape(batch: int, size: int, uint8_input: bool) -> tuple[int, int, int, int]:
    """Shape of the exported model's input: uint8 NHWC crops, or normalised float NCHW."""
    return (batch, size, size, 3) if uint8_input else (batch, 3, size, size)


def model_input(crops: np.ndarray, pre: Preprocessing, uint8_input: bool) -> np.ndarray:
    """uint8 [N, S, S, 3] crops in the exported model's input layout (contiguous)."""
    if uint8_input:
        return np.ascontiguousarray(crops)
    return normalize(torch.from_numpy(np.ascontiguousarray(crops)), pre).numpy()
