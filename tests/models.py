"""Model directories for tests that need two models: a copy of one with its logit shifted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from safetensors.torch import load_file

from engine.model.manifest import read_manifest
from engine.model.model_dir import WEIGHTS, write_model_dir


def shifted_copy(source: Path, dest: Path, shift: float) -> Path:
    """The same network with `shift` added to the head's bias, so each logit is exactly the
    source's plus `shift`: the images whose logit lies in (-shift, 0] flip from real to ai_generated."""
    manifest = read_manifest(source)
    tensors = load_file(str(source / WEIGHTS))
    tensors["head.bias"] = tensors["head.bias"] + shift
    write_model_dir(dest, dataclasses.replace(manifest, version=f"{manifest.version}-shift{shift:g}"), tensors.items())
    return dest
