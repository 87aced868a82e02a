"""Training checkpoints are read without running code: `dda export` and `dda train --init` refuse a
pickle that would execute something, with a one-line error (a resumed `dda train` reads its
checkpoint with the same `load_training_state` that export uses)."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from training.train import TrainConfig, load_training_state


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {MARKER}",))


MARKER = Path(f"/tmp/dda-train-pickle-{os.getpid()}")


@pytest.fixture()
def evil(tmp_path: Path) -> Path:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"trainable": {}, "step": 1, "config": {"x": _Exploit()}}, path, pickle_module=pickle)
    yield path
    assert not MARKER.exists(), "the pickle ran code"


def dda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dda", *args], capture_output=True, text=True, timeout=120)


def test_export_refuses_a_code_running_checkpoint(evil: Path, tmp_path: Path) -> None:
    proc = dda("export", "--checkpoint", str(evil), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "refused to unpickle" in proc.stderr and "Traceback" not in proc.stderr


def test_train_refuses_a_code_running_init_checkpoint(evil: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    proc = dda("train", "--init", str(evil), "--pairs", str(pairs), "--output", str(tmp_path / "run"))
    assert proc.returncode == 2 and "refused to unpickle" in proc.stderr and "Traceback" not in proc.stderr


def test_a_real_training_state_loads_safely(tmp_path: Path) -> None:
    """Everything `dda train` saves (optimizer state, Python and torch RNG, config) passes the safe loader."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"trainable": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": random.Random(1).getstate(),
                "torch_rng": torch.get_rng_state(), "step": 3, "config": asdict(TrainConfig("a", "b", "c")), "source": "x"}, path)
    state = load_training_state(path)
    assert state["step"] == 3 and random.Random().setstate(state["rng"]) is None
    assert torch.equal(state["trainable"]["weight"], model.state_dict()["weight"])
