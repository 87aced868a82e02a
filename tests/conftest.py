"""Shared fixtures: a tiny checkpoint in the official layout and its model directory, and a tiny
Community Forensics model directory (a second detector), a fresh redis-server per test (images: tests/images.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.model.checkpoint import import_checkpoint
from engine.model.commfor import import_commfor
from engine.model.model_dir import LoadedModel, load_model_dir
from engine.model.synthetic import (
    tiny_architecture,
    tiny_commfor_architecture,
    write_commfor_checkpoint,
    write_official_checkpoint,
)
from tests.schemas import check_record
from tests.services import RedisServer
from worker.pipeline.completion import Completion


@pytest.fixture(autouse=True)
def verdicts_follow_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verdict or dead letter resolved in this process is checked against the published schemas."""
    resolve = Completion.resolve

    def checked(self: Completion, record: dict) -> bool:  # type: ignore[type-arg]
        if "schema_version" in record:  # Completion's own unit tests resolve with bare dicts
            check_record(record)
        return resolve(self, record)

    monkeypatch.setattr(Completion, "resolve", checked)


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server per test."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "DDA_ckpt.pth", tiny_architecture(), seed=3)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("model") / "tiny"
    import_checkpoint(tiny_checkpoint, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_commfor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("commfor")
    import_commfor(write_commfor_checkpoint(tmp / "model.safetensors", tiny_commfor_architecture(), seed=9), tmp / "commfor")
    return tmp / "commfor"


@pytest.fixture()
def tiny_model(tiny_model_dir: Path) -> LoadedModel:
    return load_model_dir(tiny_model_dir)


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.leftovers import become_subreaper

    become_subreaper()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails if any process it started outlives it (decode processes of a killed worker
    included); processes that other jobs on the machine run are not its business (tests.leftovers)."""
    import os
    import time

    from tests.leftovers import leftovers

    if not Path("/proc").exists() or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a test process of a parallel run: its orphans pass to the main process, which checks
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
