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
bootstrap() {
    local extras="$1" stamp
    stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT"/worker/*.c | sha256sum | cut -c1-16)-${extras//,/-}"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    system_packages "$extras"  # cheap checks, every run: a machine may have lost them
    if [ ! -f "$stamp" ]; then
        echo "dda: installing the project into $VENV (extras: $extras)" >&2
        # torch first and pinned: an unpinned resolve would pull several GB of CUDA wheels.
        "$VENV/bin/pip" install --quiet "torch==2.13.0" >&2
        "$VENV/bin/pip" install --quiet -e "$ROOT[$extras]" >&2
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}
