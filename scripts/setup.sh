#!/usr/bin/env bash
# Set up kanjirec on a fresh Debian machine: the default print fonts, a virtual
# environment in .venv, the CPU build of torch, and the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

fonts=(fonts-noto-cjk fonts-ipafont fonts-ipaexfont)
missing=()
for f in "${fonts[@]}"; do dpkg -s "$f" >/dev/null 2>&1 || missing+=("$f"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: cannot install ${missing[*]} (not root, no sudo); synthetic data will use strokes only" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is a local CPU wheel here, anything looser pulls CUDA builds.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: ready (.venv)"
