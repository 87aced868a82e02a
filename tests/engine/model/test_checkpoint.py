from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.model.arch import expected_shapes
from engine.model.checkpoint import CheckpointError, import_checkpoint, merge_lora, sha256_file
from engine.model.manifest import ModelDirError
from engine.model.model_dir import load_model_dir
from engine.model.synthetic import random_official_state, tiny_architecture

ARCH = tiny_architecture()


def save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state, "optimizer": {}}, path)
    return path


def test_import_writes_manifest_and_merged_weights(tiny_checkpoint: Path, tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    digest = sha256_file(tiny_checkpoint)
    assert manifest["source"]["sha256"] == digest
    assert manifest["version"] == f"dda-{digest[:12]}"
    assert manifest["threshold"] == 0.5
    assert manifest["architecture"]["heads"] == 2 and manifest["architecture"]["depth"] == 2
    assert manifest["source"]["lora"] == {"rank": 8, "alpha": 1.0, "merged_layers": 8}
    assert manifest["preprocessing"]["crop_size"] == 336 and manifest["preprocessing"]["resize"] is None

    state = torch.load(tiny_checkpoint, weights_only=True)["model"]
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as f:
        assert list(f.keys()) == sorted(expected_shapes(ARCH))  # no mask token, no LoRA factors
        qkv = f.get_tensor("blocks.1.attn.qkv.weight")
    prefix = "base_model.model.blocks.1.attn.qkv."
    expected = state[prefix + "original_layer.weight"] + (1 / 8) * state[prefix + "lora.lora_B"] @ state[prefix + "lora.lora_A"]
    assert torch.allclose(qkv, expected, atol=1e-6)


def test_merge_accumulates_in_float64() -> None:
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    exact = (w.double() + 0.5 * b.double() @ a.double()).float()
    assert torch.equal(merge_lora(w, a, b, 0.5), exact)


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = random_official_state(ARCH)
    del state["base_model.model.blocks.1.mlp.fc2.lora.lora_B"]
    with pytest.raises(CheckpointError, match=r"missing key 'base_model\.model\.blocks\.1\.mlp\.fc2\.lora\.lora_B'"):
        import_checkpoint(save(tmp_path / "c.pth", state), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_first_missing_key_in_model_order_is_named(tmp_path: Path) -> None:
    state = random_official_state(ARCH)
    del state["base_model.fc.bias"]
    del state["base_model.model.blocks.0.norm2.weight"]
    with pytest.raises(CheckpointError, match=r"missing key 'base_model\.model\.blocks\.0\.norm2\.weight'"):
        import_checkpoint(save(tmp_path / "c.pth", state), tmp_path / "out")


def test_misshaped_key_is_named_with_shapes(tmp_path: Path) -> None:
    state = random_official_state(ARCH)
    state["base_model.model.blocks.0.attn.proj.lora.lora_A"] = torch.zeros(8, 64)
    with pytest.raises(CheckpointError, match=r"'base_model\.model\.blocks\.0\.attn\.proj\.lora\.lora_A' has shape \[8, 64\], expected \[8, 128\]"):
        import_checkpoint(save(tmp_path / "c.pth", state), tmp_path / "out")


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    state = random_official_state(ARCH)
    state["base_model.model.register_tokens"] = torch.zeros(1, 4, 128)
    with pytest.raises(CheckpointError, match="unexpected key 'base_model.model.register_tokens'"):
        import_checkpoint(save(tmp_path / "c.pth", state), tmp_path / "out")


def test_truncated_file_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tiny_checkpoint.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        import_checkpoint(cut, tmp_path / "out")


def test_wrong_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no state dict with 'base_model.model.' keys"):
        import_checkpoint(path, tmp_path / "out")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/dda-pickle-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/dda-pickle-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": _Exploit()}}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        import_checkpoint(path, tmp_path / "out")
    assert not marker.exists()


def test_model_dir_refuses_tampered_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((tiny_model_dir / "manifest.json").read_text())
    (broken / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelDirError, match="cannot read"):
        load_model_dir(broken)
    with pytest.raises(ModelDirError, match="not a model directory"):
        load_model_dir(tmp_path)
