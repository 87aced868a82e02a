"""Write a safetensors file one tensor at a time.

`safetensors.torch.save_file` holds every tensor plus a bytes copy of each in memory at
once; importing a 1.2 GB checkpoint that way peaks near 3x its size. The format is a
little-endian u64 header length, a JSON header of dtypes, shapes and byte offsets, then
the raw tensor bytes, so with the shapes known up front the tensors can be streamed.
Reading stays with the safetensors library.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


def write_streamed(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write float32 `tensors` (in the order of `shapes`, each of its shape) to `path` atomically."""
    item = 4
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape in shapes.items():
        size = item
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format asks for an 8-byte aligned data section

    tmp = path.with_name(path.name + ".partial")
    expected = iter(shapes.items())
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name, tensor in tensors:
            want_name, want_shape = next(expected, (None, None))
            if name != want_name or tuple(tensor.shape) != want_shape:
                raise ValueError(f"tensor {name!r} {tuple(tensor.shape)} out of order or shape; expected {want_name!r} {want_shape}")
            out.write(tensor.detach().to(torch.float32).contiguous().cpu().view(torch.uint8).numpy().tobytes())
        leftover = next(expected, None)
        if leftover is not None:
            raise ValueError(f"tensor {leftover[0]!r} was never written")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
