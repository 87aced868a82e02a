#!/usr/bin/env bash
# The GPU check: one command for a bare GPU machine without network (carry .gpu/, made by
# benchmarks/gpu_pack.sh). It unpacks the carried servers (redis-server, nginx) and headers,
# installs the carried wheels offline beside the machine's own torch, builds the C extensions,
# then measures the engine (benchmarks/engine_throughput.py: fp32 batch 1, bf16 eager and
# compiled, drift against fp32 on distinct real and generated crops, where the kernel time goes)
# and a whole pod (benchmarks/pipeline_rate.py: stub, ViT-L, ViT-L compiled; GPU utilisation), and
# what the second detector costs beside DDA (benchmarks/second_detector_cost.py, bf16, batch 64).
# Everything lands in OUTDIR: a log per step, engine.json, pipeline.json, results.json and
# results.md. A failed step is recorded and the next one still runs; the exit status says
# whether all passed.
#
#     bash benchmarks/gpu_check.sh OUTDIR              # on the GPU machine (about 6 minutes)
#     bash benchmarks/gpu_check.sh --rehearse OUTDIR   # the same steps on a CPU: tiny model, small counts
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu
if [ "${1:-}" = --rehearse ]; then MODE=rehearse; shift; fi
OUTDIR="${1:?usage: gpu_check.sh [--rehearse] OUTDIR}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
CARRY="${DDA_GPU_CARRY:-$ROOT/.gpu}"
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ "$MODE" = rehearse ] && [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
fi
PREFIX="$(mktemp -d /tmp/dda-gpu-check.XXXXXX)"  # unpacked packages and installed wheels; removed at the end
trap 'rm -rf "$PREFIX"' EXIT
cd "$ROOT"
: >"$OUTDIR/steps.tsv"
FAILED=0

# step NAME SECONDS COMMAND...: run it under a time limit (its whole process group is killed at
# the limit), output to OUTDIR/NAME.log and the terminal, outcome to steps.tsv.
step() {
    local name="$1" limit="$2" start rc
    shift 2
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >>"$OUTDIR/steps.tsv"
    if [ "$rc" -ne 0 ]; then
        FAILED=1
        echo "== $name FAILED with status $rc"
    fi
}

machine() {
    uname -a
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable, "| torch", torch.__version__, torch.__file__, "| cuda", torch.cuda.is_available())'
    nproc
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; fi
}

# Carried Debian packages, unpacked; of their libraries only those this machine lacks stay, so
# the servers find them and nothing of the machine's own is shadowed.
servers() {
    local deb lib have
    if compgen -G "$CARRY/debs/*.deb" >/dev/null; then
        for deb in "$CARRY"/debs/*.deb; do dpkg -x "$deb" "$PREFIX/root" || return 1; done
        have=$(ldconfig -p)
        for lib in "$PREFIX"/root/usr/lib/x86_64-linux-gnu/*.so.*; do
            if [ -e "$lib" ] && grep -q "/$(basename "$lib")\$" <<<"$have"; then rm -f "$lib"; fi
        done
    else
        echo "nothing carried in $CARRY/debs: the machine's own servers"
    fi
    for tool in redis-server redis-cli nginx; do
        if command -v "$tool" >/dev/null; then
            echo "$tool: $(command -v "$tool")"
        elif [ "$tool" = nginx ] && [ "$MODE" = rehearse ]; then
            # a rehearsal's origin may be Python's http.server; the pipeline table names which served
            echo "nginx: not installed here (the rehearsal's pipeline step serves images with Python's http.server)"
        else
            echo "missing: $tool"
            return 1
        fi
    done
    redis-server --version
    if command -v nginx >/dev/null; then nginx -v 2>&1; fi
}

wheels() {
    if [ "$MODE" = rehearse ]; then
        echo "rehearsal: this environment's packages (the carried wheels are for the GPU machine's Python)"
    elif compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$PREFIX/site" "$CARRY"/wheels/*.whl || return 1
    else
        echo "nothing carried in $CARRY/wheels: this environment's packages"
    fi
    # the machine's torch must be the one still imported
    "$PYTHON" -c 'import torch, kafka, redis, structlog, crc32c, jsonschema; from dda.commands.local_stack import tansu_binary; print("torch", torch.__version__, torch.__file__); print("tansu", tansu_binary())'
}

build() {
    local prefix=()
    # the machine's libjpeg headers when it has them, else the carried ones
    if ! echo '#include <stdio.h>
#include <jpeglib.h>' | cc -E - >/dev/null 2>&1; then prefix=(--prefix "$PREFIX/root"); fi
    "$PYTHON" benchmarks/build_extensions.py "${prefix[@]}" && "$PYTHON" -c 'import engine.imaging._jpeg, engine.imaging._pdq; print("extensions import")'
}

export -f machine servers wheels build
export PYTHON CARRY PREFIX MODE
export PATH="$PATH:$PREFIX/root/usr/bin:$PREFIX/root/usr/sbin"  # the machine's own first
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PREFIX/root/usr/lib/x86_64-linux-gnu"
export PYTHONPATH="$ROOT:$PREFIX/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

crops=()
if [ -f "$CARRY/crops.npy" ]; then crops=(--crops "$CARRY/crops.npy"); fi
if [ "$MODE" = gpu ]; then
    engine=(--device cuda --images 0 --generated 500 --repeats 2 --peak-tflops 790 --profile bf16:64
            --configs fp32:1,bf16:32,bf16:64,bf16:128,bf16:256,bf16:64:graphs,bf16:128:graphs,bf16:256:graphs)
    pod=(--device cuda --consumers 4 --decode-workers 11 --max-batch 64 --configs pod:stub,pod:vitl,pod:vitl+graphs
         --requests 3000 --paced-s 6 --paced-images 3000 --hit-rounds 1)
    second=(--device cuda --precision bf16 --batch 64 --repeats 5 --images 0)
    limits=(120 300 330 90)
else
    engine=(--tiny --images 0 --real 6 --generated 10 --repeats 1 --profile bf16:8 --profile-batches 2 --configs fp32:1,bf16:8,bf16:8:graphs)
    pod=(--device cpu --consumers 2 --decode-workers 2 --configs pod:tiny --warmup 5 --requests 20 --paced-s 1
         --paced-images 10 --hit-rounds 1)
    second=(--tiny --device cpu --batch 2 --repeats 1 --images 0)
    limits=(120 120 120 60)
fi

step machine 30 bash -c machine
step servers "${limits[0]}" bash -c servers
step build "${limits[0]}" bash -c build
step wheels "${limits[0]}" bash -c wheels
step engine "${limits[1]}" "$PYTHON" benchmarks/engine_throughput.py "${crops[@]}" "${engine[@]}" --json "$OUTDIR/engine.json"
step pipeline "${limits[2]}" "$PYTHON" benchmarks/pipeline_rate.py "${pod[@]}" --no-floor --json "$OUTDIR/pipeline.json"
step second "${limits[3]}" "$PYTHON" benchmarks/second_detector_cost.py "${second[@]}"
"$PYTHON" benchmarks/gpu_report.py "$OUTDIR" --mode "$MODE" || FAILED=1
exit "$FAILED"
