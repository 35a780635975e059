#!/usr/bin/env bash
# The CPU accuracy check: the CNN on 300 ETL9G classes of synthetic handwriting (strokes only,
# no print fonts), tested on its writer-disjoint test split, then on print fonts it never saw.
# Usage: scripts/cpu_etl9g_300.sh OUT_DIR [PER_CLASS] [EPOCHS]
set -euo pipefail
out=${1:?usage: cpu_etl9g_300.sh OUT_DIR [PER_CLASS] [EPOCHS]}
per_class=${2:-60}
epochs=${3:-6}
kanjirec=${KANJIREC:-kanjirec}

$kanjirec data synth --charset etl9g --classes 300 --per-class "$per_class" --font-fraction 0 \
    --out "$out/hand300" --workers "$(nproc)"
# Fonts only: every sample is one of the default print faces, none of which training saw.
$kanjirec data synth --charset etl9g --classes 300 --per-class 8 --font-fraction 1 \
    --out "$out/fonts300" --workers "$(nproc)"
$kanjirec train --model cnn --data "$out/hand300" --out-dir "$out/runs" --epochs "$epochs" \
    --batch-size 64 --lr 2e-3 --workers 1 --device cpu ${TRAIN_ARGS:-}
$kanjirec evaluate "$out/runs/cnn" --data "$out/hand300" --split test --out "$out/eval_hand"
$kanjirec evaluate "$out/runs/cnn" --data "$out/fonts300" --split all --out "$out/eval_fonts"
