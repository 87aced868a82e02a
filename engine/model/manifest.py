"""A model's manifest: what every consumer reads to know the architecture, the
preprocessing, the decision threshold and the version string that namespaces cached verdicts.

Kept apart from the weights (`engine.model.model_dir`) so a process that only needs these facts,
such as a worker feeding a shared engine process, never loads torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.imaging.preprocess import Preprocessing
from engine.model.arch import Architecture

MANIFEST = "manifest.json"
FORMAT = "dda-model/1"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    architecture: Architecture
    preprocessing: Preprocessing
    threshold: float
    source: dict[str, Any]
    warning: str | None = None  # set for models that are not detectors (`dda make-test-model`); every verdict carries it

    @property
    def threshold_logit(self) -> float:
        """The threshold as a logit, so labels never depend on sigmoid rounding."""
        return math.log(self.threshold / (1.0 - self.threshold))

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture.to_json(),
            "preprocessing": self.preprocessing.to_json(),
            "threshold": self.threshold,
            "source": self.source,
        }
        return {**data, "warning": self.warning} if self.warning else data

    def served_by_crops(self) -> Manifest:
        """This manifest, if the worker's decode processes can prepare its input: a crop of the decoded
        image. A model that scales the image first (Community Forensics) is scored by `dda eval` and
        `dda calibrate --second` only, for now."""
        if self.preprocessing.resize is not None:
            raise ModelDirError(f"model {self.version} scales images before cropping (its shorter side to {self.preprocessing.resize} px); "
                                "the worker, dda scan and dda compare-models cut crops without scaling and serve DDA-layout models only")
        return self

    def describe(self) -> dict[str, str]:
        """The model as a verdict names it: name, version, and the warning of a model that is not a detector."""
        info = {"name": self.name, "version": self.version}
        return {**info, "warning": self.warning} if self.warning else info

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ModelDirError(f"manifest format is {data.get('format')!r}, expected {FORMAT!r}")
        threshold = float(data["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ModelDirError(f"threshold {threshold} is not strictly between 0 and 1")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            architecture=Architecture.from_json(data["architecture"]),
            preprocessing=Preprocessing.from_json(data["preprocessing"]),
            threshold=threshold,
            source=dict(data.get("source", {})),
            warning=str(data["warning"]) if data.get("warning") else None,
        )


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelDirError(f"{path} is not a model directory: {MANIFEST} not found")
    try:
        return Manifest.from_json(json.loads(manifest_path.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{manifest_path} is malformed: {exc}") from exc
