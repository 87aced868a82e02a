"""Layers import downward only: engine at the bottom, worker and training on it, the CLI root
(`dda`) on everything, and nothing on the CLI root. Every import counts, also those inside
functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {  # package -> packages none of its modules may import
    "engine": {"worker", "training", "dda"},
    "training": {"worker", "dda"},
    "worker": {"training", "dda"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downward(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, package
    wrong = [f"{m.relative_to(ROOT)}:{line} imports {top}" for m in modules for top, line in imported_packages(m)
             if top in FORBIDDEN[package]]
    assert not wrong, wrong


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from worker.decode_pool import DecodePool\n    import training.cli\n")
    assert imported_packages(module) == {("os", 1), ("worker", 4), ("training", 5)}


def test_a_decode_process_never_loads_torch() -> None:
    """After decoding, hashing and reading provenance, no torch library is mapped in the child."""
    import threading

    from tests.images import encode, scene
    from tests.provenance_files import sign
    from worker.decode_pool import DecodeJob, DecodeLimits, DecodePool
    from worker.supervision import Supervisor

    supervisor = Supervisor()
    pool = DecodePool(1, supervisor, DecodeLimits())
    pool.start()
    try:
        done = threading.Event()
        answers = []
        data = sign(encode(scene(400, 300, seed=1), "PNG"), "image/png")
        pool.submit(DecodeJob(data, 224, 1, 10_000_000, done=lambda p: (answers.append(p), done.set()), provenance=True))
        assert done.wait(60)
        assert answers[0].error is None and answers[0].pdq is not None and answers[0].provenance["declared_ai"] is True
        maps = Path(f"/proc/{pool.pids()[0]}/maps").read_text()
        assert "libtorch" not in maps and "libc2pa" in maps
    finally:
        supervisor.stop(5.0)
        pool.close()
