"""Shared fixtures: a tiny checkpoint in the official layout, its model directory, images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.checkpoint import import_checkpoint
from engine.model_dir import LoadedModel, load_model_dir
from engine.synthetic import tiny_architecture, write_official_checkpoint
from tests.schemas import check_record
from worker.completion import Completion

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def verdicts_follow_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verdict or dead letter resolved in this process is checked against the published schemas."""
    resolve = Completion.resolve

    def checked(self: Completion, record: dict) -> bool:  # type: ignore[type-arg]
        if "schema_version" in record:  # Completion's own unit tests resolve with bare dicts
            check_record(record)
        return resolve(self, record)

    monkeypatch.setattr(Completion, "resolve", checked)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "DDA_ckpt.pth", tiny_architecture(), seed=3)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("model") / "tiny"
    import_checkpoint(tiny_checkpoint, dest)
    return dest


@pytest.fixture()
def tiny_model(tiny_model_dir: Path) -> LoadedModel:
    return load_model_dir(tiny_model_dir)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients plus noise), so crops differ by position."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A structured image (shapes on a gradient): PDQ quality well above 50, unlike noise."""
    from PIL import ImageDraw

    image = photo(width, height, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        w, h = int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


# --- no process left behind ----------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.leftovers import become_subreaper

    become_subreaper()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails if any process it started outlives it (decode processes of a killed worker
    included); processes that other jobs on the machine run are not its business (tests.leftovers)."""
    import os
    import time

    from tests.leftovers import leftovers

    if not Path("/proc").exists():
        return
    deadline = time.monotonic() + 10
    left = leftovers(os.getpid())
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(os.getpid())
    if left:
        print("\nprocesses left behind by the tests:\n  " + "\n  ".join(left))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        print("\nno test process left behind")
