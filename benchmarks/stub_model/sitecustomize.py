"""Loaded by every Python process of a benchmarked worker (PYTHONPATH): with DDA_BENCH_STUB=1,
`engine.runners.backend.make_runner` returns a runner whose logits cost nothing, so a benchmark
measures the pipeline (Kafka, fetch, cache, decode, hand-over to the engine), not a CPU ViT.
The product has no such backend: it would publish made-up verdicts."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any


class _ZeroCostRunner:
    def __init__(self, preprocessing: Any, max_batch: int) -> None:
        self.preprocessing = preprocessing
        self.max_batch = max_batch

    def logits(self, crops: Any) -> Any:
        import numpy as np

        return np.zeros(len(crops), np.float32)


def _stub_make_runner(loaded: Any, _model_dir: Any, *, max_batch: int = 16, log: Any = None, **_options: Any) -> _ZeroCostRunner:
    if log is not None:
        log("backend: zero-cost benchmark stub (DDA_BENCH_STUB=1)")
    return _ZeroCostRunner(loaded.manifest.preprocessing, max_batch)


class _PatchBackend(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "engine.runners.backend":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.loader is not None
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            module.make_runner = _stub_make_runner  # type: ignore[attr-defined]

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("DDA_BENCH_STUB") == "1":
    sys.meta_path.insert(0, _PatchBackend())
