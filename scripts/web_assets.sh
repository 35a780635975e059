#!/usr/bin/env bash
# Fetch the browser page's runtime: onnxruntime-web at the version pinned in package.json and
# package-lock.json, from the npm registry (npm ci checks every package's hash against the lock),
# then copy the two files the page loads into src/kanjirec/serve/web/vendor/ (git-ignored), from
# where `kanjirec serve` serves them and `kanjirec export-web` copies them. Nothing is fetched at
# run time. Needs node and npm (Debian: apt-get install nodejs npm).
set -euo pipefail
cd "$(dirname "$0")/.."

vendor=src/kanjirec/serve/web/vendor
files=(ort.wasm.bundle.min.mjs ort-wasm-simd-threaded.wasm)
if ! command -v npm >/dev/null; then
    echo "web_assets: npm is not installed (Debian: apt-get install nodejs npm)" >&2
    exit 2
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
rm -rf "$vendor.tmp" && mkdir -p "$vendor.tmp"
trap 'rm -rf "$vendor.tmp"' EXIT
for f in "${files[@]}"; do cp "node_modules/onnxruntime-web/dist/$f" "$vendor.tmp/$f"; done
rm -rf "$vendor" && mv "$vendor.tmp" "$vendor"
echo "web_assets: onnxruntime-web $(node -p "require('./node_modules/onnxruntime-web/package.json').version") in $vendor"
