"""Run an exported ONNX model with onnxruntime, behind the same interface as TorchRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.model.manifest import Manifest
from engine.runners.contract import Runner, check_crops, run_in_chunks
from engine.runners.onnx_format import INPUT_UINT8, META_INPUT, META_MANIFEST, model_input


class OnnxRunner(Runner):
    def __init__(self, path: Path, *, max_batch: int = 16, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_MANIFEST not in meta:
            raise ValueError(f"{path} has no {META_MANIFEST} metadata: not exported by `dda export-onnx`")
        self.manifest = Manifest.from_json(json.loads(meta[META_MANIFEST]))
        self.preprocessing = self.manifest.preprocessing
        self.uint8_input = meta.get(META_INPUT) == INPUT_UINT8
        self.input_name = self.session.get_inputs()[0].name
        self.max_batch = max_batch

    def logits(self, crops: np.ndarray) -> np.ndarray:
        check_crops(crops, self.preprocessing.crop_size)
        return run_in_chunks(crops, self.max_batch, self._run_chunk)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        feed = model_input(chunk, self.preprocessing, self.uint8_input)
        return self.session.run(None, {self.input_name: feed})[0].reshape(-1)
