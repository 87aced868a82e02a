# Sourced by scripts/dda and scripts/test: make .venv with the project and the given extras.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DDA_VENV:-$ROOT/.venv}"
bootstrap() {
    local extras="$1" stamp
    stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-${extras//,/-}"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ]; then
        echo "dda: installing the project into $VENV (extras: $extras)" >&2
        # torch first and pinned: an unpinned resolve would pull several GB of CUDA wheels.
        "$VENV/bin/pip" install --quiet "torch==2.13.0" >&2
        "$VENV/bin/pip" install --quiet -e "$ROOT[$extras]" >&2
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}
