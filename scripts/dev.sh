#!/usr/bin/env bash
# One entry point for a fresh machine: installs everything (system packages on Debian/Ubuntu,
# a virtual environment with torch, the package, its test oracles, docs and lint tools), then
#   scripts/dev.sh napari   opens napari with the SAM-HQ widget docked on a sample image
#   scripts/dev.sh test     lint (ruff), docs (mkdocs --strict), then the test suite (what CI runs)
# Installation is skipped when nothing it depends on changed since the last run.
# Linux needs apt-get for Xvfb and Qt's X libraries; macOS needs no system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="2.13.0"     # CPU build; a bare 'torch' requirement can pull a multi-GB CUDA build
OFFICIAL_VERSION="0.3"     # segment-anything-hq, the official code, a test oracle (no deps)
TRACCURACY_VERSION="0.4.3" # tracking metrics, a test oracle (no deps: its click pin; pyproject lists its needs)
APT_PACKAGES=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1)
VENV=.venv
PY="$VENV/bin/python"

install_system() {
    [ "$(uname -s)" = "Linux" ] || return 0   # macOS: Qt draws natively, no Xvfb needed
    if ! command -v dpkg >/dev/null 2>&1; then
        echo "note: not a Debian/Ubuntu system; install Xvfb and Qt's X libraries yourself" >&2
        return 0
    fi
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing system packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_python() {
    local stamp="$VENV/.installed-$(cat pyproject.toml scripts/dev.sh | cksum | cut -d' ' -f1)"
    [ -f "$stamp" ] && return
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    # torch first and pinned: a bare 'torch' requirement can pull a multi-GB CUDA build on
    # Linux. On macOS this is the CPU + MPS build.
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
    "$PY" -m pip install -q -e ".[dev]"
    "$PY" -m pip install -q --no-deps "segment-anything-hq==$OFFICIAL_VERSION"
    "$PY" -m pip install -q --no-deps "traccuracy==$TRACCURACY_VERSION"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
}

install_system
install_python

case "${1:-napari}" in
    napari) shift || true; exec "$PY" -m napari_sam_hq "$@" ;;
    test)
        shift
        "$VENV/bin/ruff" check .
        # the docs must build without a warning (broken links fail); --quiet would hide them
        if ! NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$VENV/site" >"$VENV/mkdocs.log" 2>&1; then
            cat "$VENV/mkdocs.log" >&2; echo "mkdocs build --strict failed" >&2; exit 1
        fi
        exec "$PY" -m pytest "$@" ;;
    *)      echo "usage: scripts/dev.sh [napari|test] [args...]" >&2; exit 2 ;;
esac
