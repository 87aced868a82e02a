"""ONNX export checked with onnx's checker and run with onnxruntime against the fp32 torch model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.compile.onnx_export import export_onnx
from engine.imaging.decode import decode_rgb
from engine.imaging.preprocess import center_crop
from engine.model.checkpoint import import_checkpoint
from engine.model.model_dir import load_model_dir
from engine.model.synthetic import tiny_architecture, write_official_checkpoint
from engine.runners.onnx_format import INPUT_FLOAT, INPUT_UINT8, META_INPUT, META_MANIFEST
from engine.runners.onnx_runner import OnnxRunner
from engine.runners.torch_runner import TorchRunner
from tests.images import SHARED_DATA, encode, photo


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated photos of awkward sizes and modes, plus a few shared JPEGs when present."""
    root = tmp_path_factory.mktemp("verify-images")
    for i, (w, h) in enumerate([(801, 613), (200, 500), (336, 336), (1000, 340), (40, 30)]):
        (root / f"p{i}.png").write_bytes(encode(photo(w, h, seed=i), "PNG"))
    (root / "cmyk.jpg").write_bytes(encode(photo(500, 400, seed=9).convert("CMYK"), "JPEG", quality=90))
    shared = sorted((SHARED_DATA / "pdq" / "bridge-mods").glob("*.jpg"))[:3]
    for path in shared:
        (root / path.name).write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module", params=[False, True], ids=["float-input", "uint8-input"])
def exported(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(load_model_dir(tiny_model_dir), path, uint8_input=request.param)
    return path


def test_graph_shape_opset_and_metadata(exported: Path, tiny_model_dir: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert "LayerNormalization" in {n.op_type for n in model.graph.node}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    meta = {p.key: p.value for p in model.metadata_props}
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert json.loads(meta[META_MANIFEST])["version"] == manifest["version"]
    fixed = [d.dim_value for d in dims[1:]]
    assert fixed == ([336, 336, 3] if meta[META_INPUT] == INPUT_UINT8 else [3, 336, 336])
    assert meta[META_INPUT] in (INPUT_UINT8, INPUT_FLOAT)


@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_matches_torch_fp32(exported: Path, tiny_model_dir: Path, image_dir: Path, batch: int) -> None:
    crops = np.stack([center_crop(decode_rgb(p.read_bytes())) for p in sorted(image_dir.iterdir())])
    loaded = load_model_dir(tiny_model_dir)
    ref = TorchRunner(loaded.network, loaded.manifest.preprocessing, max_batch=batch).logits(crops)
    got = OnnxRunner(exported, max_batch=batch).logits(crops)
    assert np.abs(ref - got).max() <= 1e-4
    assert np.ptp(ref) > 1e-3


def dda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dda", *args], capture_output=True, text=True, timeout=300)


def test_export_and_verify_cli(tiny_model_dir: Path, image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    proc = dda("export-onnx", "--model", str(tiny_model_dir), "--output", str(out), "--uint8-input")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # stdout stays clean for scripts
    verify = dda("verify-engine", "--model", str(tiny_model_dir), "--onnx", str(out), "--images", str(image_dir))
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["passed"] and report["images"] == len(list(image_dir.iterdir()))
    assert report["max_abs_diff"] <= 1e-4 and report["decision_flips"] == 0


def test_verify_fails_on_a_different_model(tiny_model_dir: Path, image_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    import_checkpoint(write_official_checkpoint(tmp_path / "o.pth", tiny_architecture(), seed=99), other)
    out = tmp_path / "other.onnx"
    export_onnx(load_model_dir(other), out)
    verify = dda("verify-engine", "--model", str(tiny_model_dir), "--onnx", str(out), "--images", str(image_dir))
    assert verify.returncode == 1
    assert json.loads(verify.stdout)["passed"] is False


def test_onnx_without_our_metadata_is_refused(tmp_path: Path, tiny_model_dir: Path, exported: Path) -> None:
    model = onnx.load(str(exported))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ValueError, match="not exported by `dda export-onnx`"):
        OnnxRunner(bare)
