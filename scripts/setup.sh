#!/usr/bin/env bash
# Set up kanjirec on a fresh Debian machine: the print fonts, a virtual environment in .venv, the
# CPU build of torch, the package itself, the drawing page's runtime (onnxruntime-web from npm,
# scripts/web_assets.sh) with what its browser test needs (Debian's chromium and chromium-driver; no
# browser is downloaded by anything else), and zinnia with its Tegaki Japanese model (for
# `kanjirec bench peers`).
#
# Fonts: only packages on kanjirec's allow-list (src/kanjirec/data/font_registry.py,
# docs/FONTS.md) are ever installed. KANJIREC_FONTS=all (the default) installs every one the
# registry uses (training faces and the held-out families: ~358 MB download, ~820 MB on disk,
# ~2 min on a fast mirror; docs/FONTS.md lists each package);
# KANJIREC_FONTS=default only the default print faces (Noto CJK, IPA, IPAex: ~73 MB download).
set -euo pipefail
cd "$(dirname "$0")/.."

default_fonts=(fonts-noto-cjk fonts-ipafont fonts-ipaexfont)
all_fonts=(
    "${default_fonts[@]}" fonts-noto-cjk-extra fonts-hanazono
    fonts-sawarabi-gothic fonts-sawarabi-mincho fonts-motoya-l-cedar fonts-motoya-l-maruberi
    fonts-morisawa-bizud-gothic fonts-morisawa-bizud-mincho fonts-migmix fonts-horai-umefont
    fonts-konatu fonts-monapo fonts-dejima-mincho fonts-oradano-mincho-gsrr fonts-arphic-ukai
    fonts-arphic-uming fonts-cwtex-kai fonts-cns11643-kai
)
case "${KANJIREC_FONTS:-all}" in
    all) fonts=("${all_fonts[@]}") ;;
    default) fonts=("${default_fonts[@]}") ;;
    *) echo "setup: KANJIREC_FONTS must be 'all' or 'default', got '${KANJIREC_FONTS}'" >&2; exit 2 ;;
esac
# `kanjirec bench peers` and its tests: zinnia's library and the Tegaki Japanese model.
peers=(libzinnia0 tegaki-zinnia-japanese)
missing=()
for f in "${fonts[@]}" "${peers[@]}" chromium chromium-driver; do dpkg -s "$f" >/dev/null 2>&1 || missing+=("$f"); done
# node and npm by command: some installs (NodeSource's nodejs) bring npm without Debian's package.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: cannot install ${missing[*]} (not root, no sudo); synthetic data will use strokes only," \
             "the drawing page's runtime and browser test need nodejs, npm, chromium, chromium-driver," \
             "and \`kanjirec bench peers\` needs libzinnia0 and tegaki-zinnia-japanese" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is a local CPU wheel here, anything looser pulls CUDA builds.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
bash scripts/web_assets.sh
echo "setup: ready (.venv)"
