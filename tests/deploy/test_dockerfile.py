"""Docker cannot run here, so the Dockerfile is checked statically against the package."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def stage(name: str) -> str:
    match = re.search(rf"^FROM .* AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_entrypoint_is_the_packaged_console_script() -> None:
    assert PYPROJECT["project"]["scripts"]["dda"] == "dda.cli:main"
    for target in ("gpu", "cpu"):
        body = stage(target)
        assert 'ENTRYPOINT ["dda"]' in body and 'CMD ["worker"]' in body
        assert "USER 10001:10001" in body


def test_installed_extras_exist_and_sources_are_copied() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for build, extra in (("gpu-build", "gpu"), ("cpu-build", "cpu")):
        body = stage(build)
        assert f'"/src[{extra}]"' in body and extra in extras
        for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
            assert f"COPY {package.rstrip('*')} /src/{package.rstrip('*')}" in body
        assert "COPY pyproject.toml README.md /src/" in body
        assert "libjpeg" in body  # headers for engine/imaging/_jpeg.c
    assert any("tensorrt" in d for d in extras["gpu"]) and any("pycuda" in d for d in extras["gpu"])


def test_healthcheck_and_port_match_the_worker() -> None:
    from worker.config import load

    port = load({}).metrics_port
    for target in ("gpu", "cpu"):
        body = stage(target)
        assert f"EXPOSE {port}" in body and f"DDA_METRICS_PORT={port}" in body
        assert f"http://127.0.0.1:{port}/healthz" in body
    assert '"/healthz"' in (ROOT / "worker" / "endpoints.py").read_text()
