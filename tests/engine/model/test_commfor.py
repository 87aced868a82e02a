"""The Community Forensics detector: its checkpoint imported as published, its preprocessing, its network."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.imaging.preprocess import Preprocessing, resize_shorter, resized_shape
from engine.model.checkpoint import CheckpointError
from engine.model.commfor import import_commfor
from engine.model.model_dir import load_model_dir
from engine.model.synthetic import random_commfor_state, tiny_architecture, tiny_commfor_architecture, write_commfor_checkpoint
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from tests.images import scene


def rgb(width: int, height: int, seed: int) -> np.ndarray:
    return np.asarray(scene(width, height, seed).convert("RGB"))

ARCH = tiny_commfor_architecture()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_import_as_published_runs_without_layerscale(tmp_path: Path, suffix: str) -> None:
    checkpoint = write_commfor_checkpoint(tmp_path / f"model{suffix}", ARCH, seed=1)
    manifest = import_commfor(checkpoint, tmp_path / "commfor")
    assert manifest.version.startswith("commfor-") and not manifest.architecture.layerscale
    loaded = load_model_dir(tmp_path / "commfor")
    pre = loaded.manifest.preprocessing
    assert (pre.resize, pre.crop_size, pre.mean) == (440, 384, (0.485, 0.456, 0.406)) and pre == Preprocessing.from_json(pre.to_json())
    assert not any("ls1" in name for name, _ in loaded.network.named_parameters())
    predictions = Detector(loaded.manifest, TorchRunner(loaded.network, pre)).predict([rgb(640, 480, s) for s in range(3)])
    assert len({round(p.logit, 6) for p in predictions}) == 3 and all(np.isfinite(p.logit) for p in predictions)


def test_the_network_computes_what_its_weights_say(tmp_path: Path) -> None:
    """One block by hand (no LayerScale: x + attn(norm1(x)), then x + mlp(norm2(x))) against the module."""
    import_commfor(write_commfor_checkpoint(tmp_path / "m.safetensors", ARCH, seed=2), tmp_path / "commfor")
    net = load_model_dir(tmp_path / "commfor").network
    state = random_commfor_state(ARCH, seed=2)
    w = {k[len("vit.") :]: v for k, v in state.items()}
    x = torch.randn(2, 577, ARCH.width, generator=torch.Generator().manual_seed(0))

    def norm(t: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(t, (ARCH.width,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-6)

    def linear(t: torch.Tensor, name: str) -> torch.Tensor:
        return t @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    q, k, v = linear(norm(x, "blocks.0.norm1"), "blocks.0.attn.qkv").reshape(2, 577, 3, ARCH.heads, 64).permute(2, 0, 3, 1, 4)
    attention = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
    h = x + linear(attention.transpose(1, 2).reshape(2, 577, ARCH.width), "blocks.0.attn.proj")
    expected = h + linear(torch.nn.functional.gelu(linear(norm(h, "blocks.0.norm2"), "blocks.0.mlp.fc1")), "blocks.0.mlp.fc2")
    with torch.no_grad():
        assert torch.allclose(net.blocks[0](x), expected, atol=1e-4)


def test_sizes_follow_torchvision_resize_then_pillow_bilinear() -> None:
    assert resized_shape(480, 640, 440) == (440, 586)  # the longer side truncated: 440 * 640 / 480 = 586.7
    assert resized_shape(1000, 300, 440) == (1466, 440)
    assert resized_shape(440, 440, 440) == (440, 440)
    image = rgb(640, 480, 3)
    expected = np.asarray(Image.fromarray(image).resize((586, 440), Image.Resampling.BILINEAR))
    assert np.array_equal(resize_shorter(image, 440), expected)
    same = rgb(440, 600, 4)
    assert resize_shorter(same, 440) is same  # already the size: untouched, as torchvision leaves it


def test_a_dda_checkpoint_is_not_taken_for_community_forensics(tmp_path: Path) -> None:
    from engine.model.synthetic import write_official_checkpoint

    dda = write_official_checkpoint(tmp_path / "dda.pth", tiny_architecture())
    with pytest.raises(CheckpointError, match="no state dict with 'vit.' keys"):
        import_commfor(dda, tmp_path / "out")
    state = random_commfor_state(ARCH)
    state["vit.blocks.0.ls1.gamma"] = torch.ones(ARCH.width)
    state["vit.blocks.0.ls2.gamma"] = torch.ones(ARCH.width)
    torch.save(state, tmp_path / "ls.pt")
    with pytest.raises(CheckpointError, match="LayerScale"):
        import_commfor(tmp_path / "ls.pt", tmp_path / "out")
    del state["vit.blocks.0.ls1.gamma"], state["vit.blocks.0.ls2.gamma"], state["vit.head.bias"]
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="missing key 'vit.head.bias'"):
        import_commfor(tmp_path / "short.pt", tmp_path / "out")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/dda-commfor-pwned",))


def test_a_pickle_that_runs_code_is_refused_and_the_cli_says_so(tmp_path: Path) -> None:
    marker = Path("/tmp/dda-commfor-pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    torch.save({"vit.cls_token": _Exploit()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        import_commfor(evil, tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "dda", "import-checkpoint", str(evil), str(tmp_path / "out"), "--layout", "commfor"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "refused to unpickle" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_the_worker_side_refuses_to_serve_it_by_crops_alone(tmp_path: Path) -> None:
    """Decode processes cut crops without scaling: until they scale, `dda scan` says so instead of scoring wrong pixels."""
    import_commfor(write_commfor_checkpoint(tmp_path / "m.safetensors", ARCH), tmp_path / "commfor")
    Image.fromarray(rgb(500, 450, 7)).save(tmp_path / "a.png")
    proc = subprocess.run([sys.executable, "-m", "dda", "scan", "--model", str(tmp_path / "commfor"), str(tmp_path / "a.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "scales images before cropping" in proc.stderr and "Traceback" not in proc.stderr
