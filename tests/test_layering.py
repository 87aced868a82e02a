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


ENGINE_BELOW_RUNNERS = {"engine.process", "engine.imaging", "engine.model"}
ENGINE_RUN = ENGINE_BELOW_RUNNERS | {"engine.runners"}
FLOORS = {  # package -> the project packages (or root modules) its modules may import besides its own
    "engine.process": set(),
    "engine.imaging": {"engine.process"},
    "engine.model": {"engine.process", "engine.imaging"},
    "engine.runners": ENGINE_BELOW_RUNNERS,
    "engine.compile": ENGINE_RUN,
    "engine.serving": ENGINE_RUN,
    "worker.provenance": ENGINE_BELOW_RUNNERS,
    "worker.fetch": {"engine.process", "worker.errors"},
    "worker.cache": ENGINE_BELOW_RUNNERS | {"worker.records"},
    "worker.decode": {"engine.process", "engine.imaging", "worker.cache", "worker.provenance", "worker.errors", "worker.supervision"},
    "worker.pipeline": ENGINE_RUN | {"worker.fetch", "worker.decode", "worker.cache", "worker.provenance", "worker.errors", "worker.messages",
                                     "worker.metrics", "worker.supervision", "worker.records"},
    "worker.consume": ENGINE_RUN | {"worker.pipeline", "worker.config", "worker.messages", "worker.metrics", "worker.errors",
                                    "worker.records"},
}


def unit(module: str) -> str:
    """The package of FLOORS a module belongs to, or the module itself (a root module such as worker.config)."""
    return next((p for p in FLOORS if module == p or module.startswith(p + ".")), module)


def project_imports(path: Path) -> set[tuple[str, int]]:
    """(imported engine/worker module, line): `from worker.cache import pdq_index` names worker.cache.pdq_index."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [f"{node.module}.{a.name}" for a in node.names if (ROOT / Path(*node.module.split("."))).is_dir()]
            found |= {(m, node.lineno) for m in modules or [node.module]}
    return {(m, line) for m, line in found if m.split(".")[0] in ("engine", "worker")}


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_each_package_imports_only_the_floors_below_it(package: str) -> None:
    """Inside engine and worker, packages by role import downward too: decoding never reaches the
    runners, the model layer never the serving one, the cache never the pipeline."""
    modules = sorted((ROOT / Path(*package.split("."))).rglob("*.py"))
    assert modules, package
    wrong = [f"{m.relative_to(ROOT)}:{line} imports {name}" for m in modules for name, line in project_imports(m)
             if unit(name) != package and unit(name) not in FLOORS[package]]
    assert not wrong, wrong


def test_the_top_of_the_worker_is_imported_by_the_cli_root_alone() -> None:
    """worker.service and worker.pod assemble everything: no package below imports them."""
    modules = [m for top in ("engine", "worker", "training") for m in (ROOT / top).rglob("*.py")
               if m.relative_to(ROOT).as_posix() not in ("worker/service.py", "worker/pod.py")]
    wrong = [f"{m.relative_to(ROOT)}:{line}" for m in modules for name, line in project_imports(m) if name in ("worker.service", "worker.pod")]
    assert not wrong, wrong


def test_package_init_files_hold_only_a_docstring() -> None:
    """Importing a package runs nothing (a decode process imports worker.decode and must not load torch)."""
    for init in sorted(p for top in ("engine", "worker", "training", "dda") for p in (ROOT / top).rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from worker.decode.pool import DecodePool\n    import training.evaluate\n")
    assert imported_packages(module) == {("os", 1), ("worker", 4), ("training", 5)}


def test_a_decode_process_never_loads_torch() -> None:
    """After decoding, hashing and reading provenance, no torch library is mapped in the child."""
    import threading

    from tests.images import encode, scene
    from tests.provenance_files import sign
    from worker.decode.pool import DecodePool
    from worker.decode.process import DecodeJob, DecodeLimits
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
