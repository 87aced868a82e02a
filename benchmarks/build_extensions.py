"""Build the C extensions that pyproject.toml declares, in place, with any setuptools.

A lent GPU machine has its own Python and setuptools (perhaps older than the pyproject table
`[[tool.setuptools.ext-modules]]` needs) and maybe no libjpeg headers, which then come carried
and unpacked under a prefix. This reads the same table and hands it to setuptools' build_ext
with that prefix's include and library folders (and the library folder as the run path), so
the extensions are those a pip install would build, whatever the machine has.

    python benchmarks/build_extensions.py [--prefix DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import tomllib
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parents[1]
MULTIARCH = "x86_64-linux-gnu"


def extensions(prefix: Path | None) -> list[Extension]:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
    include, library = [], []
    if prefix is not None:
        include = [str(prefix / "usr/include"), str(prefix / "usr/include" / MULTIARCH)]
        library = [str(prefix / "usr/lib" / MULTIARCH)]
    return [Extension(e["name"], [str(ROOT / source) for source in e["sources"]], libraries=e.get("libraries", []), include_dirs=include,
                      library_dirs=library, runtime_library_dirs=library) for e in declared]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, help="a folder Debian packages were unpacked into (dpkg -x) with the headers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as build:
        os.chdir(build)  # away from pyproject.toml, which setuptools would read too
        setup(name="dda-extensions", ext_modules=extensions(args.prefix),
              script_args=["-q", "build_ext", "--build-lib", str(ROOT), "--build-temp", build])


if __name__ == "__main__":
    main()
