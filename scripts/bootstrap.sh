# Sourced by scripts/dda and scripts/test: make .venv with the project and the given extras.
# Re-installs only when pyproject.toml or the C extension changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DDA_VENV:-$ROOT/.venv}"
# System packages (Debian/Ubuntu): libjpeg headers for the partial JPEG decoder; for tests also
# redis-server (the broker, tansu, comes as a Python wheel).
system_packages() {
    local wanted=()
    dpkg -s libjpeg62-turbo-dev >/dev/null 2>&1 || dpkg -s libjpeg-turbo8-dev >/dev/null 2>&1 || wanted+=(libjpeg-dev)
    if [[ "$1" == *test* ]] && ! command -v redis-server >/dev/null; then wanted+=(redis-server); fi
    if [ ${#wanted[@]} -gt 0 ] && command -v apt-get >/dev/null; then
        echo "dda: installing ${wanted[*]} (apt-get)" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >&2
    fi
}
TORCH="torch==2.13.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
# torch first and pinned, from PyTorch's own CPU index when it answers (a few hundred MB); pip's
# configured index otherwise (PyPI's Linux build of this version may pull several GB of CUDA
# libraries, unless pip is configured with a local CPU wheel, as CI's is). The line it prints names
# the source pip really used.
install_torch() {
    local index=() report
    if "$VENV/bin/python" - "$TORCH_CPU_INDEX" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5).close()
PY
        index=(--index-url "$TORCH_CPU_INDEX")
    fi
    report=$(mktemp)
    "$VENV/bin/pip" install --quiet --report "$report" "${index[@]}" "$TORCH" >&2
    # Where pip actually took the wheel from (its install report), not where we hoped it would.
    local source size
    source=$("$VENV/bin/python" - "$report" <<'PY'
import json, sys, urllib.parse
for item in json.load(open(sys.argv[1])).get("install", []):
    if item["metadata"]["name"].lower() == "torch":
        url = urllib.parse.urlsplit(item["download_info"]["url"])
        print(f"the local file {urllib.parse.unquote(url.path)}" if url.scheme == "file" else f"{url.scheme}://{url.netloc}")
PY
)
    rm -f "$report"
    size=$(du -sm "$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" | cut -f1)
    echo "dda: $TORCH from ${source:-an already downloaded wheel} ($size MB installed)" >&2
}
# One stamp for both scripts: it records the source hash and the extras installed, and an
# install for more extras (the tests') also serves a run that needs fewer (scripts/dda).
bootstrap() {
    local extras="$1" hash stamp="$VENV/.installed" have="" wanted
    hash=$(find "$ROOT/engine" "$ROOT/worker" -name "*.c" | sort | xargs cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)  # the C extensions are built at install
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    system_packages "$extras"  # cheap checks, every run: a machine may have lost them
    if [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$hash" ]; then
        have=$(sed -n 2p "$stamp")
    fi
    wanted=$(printf '%s\n' ${have//,/ } ${extras//,/ } | sort -u | paste -sd, -)
    if [ "$wanted" != "$have" ]; then
        echo "dda: installing the project into $VENV (extras: $wanted)" >&2
        rm -f "$stamp" "$VENV"/.installed-*
        "$VENV/bin/python" -c 'import torch' 2>/dev/null || install_torch
        "$VENV/bin/pip" install --quiet -e "$ROOT[$wanted]" >&2
        printf '%s\n%s\n' "$hash" "$wanted" > "$stamp"
    fi
}
