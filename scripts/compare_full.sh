#!/usr/bin/env bash
# The architecture comparison at full class count (issue 15, item 4): every architecture trained the
# same way on the 3,036 ETL9G classes of the embedded data (the same number of freshly rendered
# samples seen, the same optimiser settings), then one table (`kanjirec compare`: accuracy, size,
# FLOPs, speed, robustness, charts), top-1 per leave-styles-out family for each model
# (`kanjirec bench styles`), and the best ensemble of all of them on both.
#
# Usage: scripts/compare_full.sh OUT_DIR [SAMPLES_PER_EPOCH] [EPOCHS]
#   MODELS="cnn radical_rnn ..." to choose the models, PER_CLASS (default 10) for the size of the
#   writer-disjoint val/test data, WORKERS for the renderer's processes, KANJIREC for the command.
# Re-running continues: finished steps are skipped, interrupted runs resume from their checkpoints.
set -euo pipefail
out=${1:?usage: compare_full.sh OUT_DIR [SAMPLES_PER_EPOCH] [EPOCHS]}
samples=${2:-64000}
epochs=${3:-4}
models=${MODELS:-"cnn mobile_cnn radical_rnn radical_attn_rnn basic_rnn stroke_rnn hybrid_cnn_rnn"}
per_class=${PER_CLASS:-10}
workers=${WORKERS:-$(nproc)}
kanjirec=${KANJIREC:-kanjirec}

[ -f "$out/data/meta.json" ] || $kanjirec data synth --charset etl9g --per-class "$per_class" \
    --out "$out/data" --workers "$workers"
runs=()
for m in $models; do
    run="$out/runs/$m"
    [ -f "$run/results/final_metrics.json" ] || $kanjirec train --model "$m" --data "$out/data" \
        --out-dir "$out/runs" --epochs "$epochs" --synth-per-epoch "$samples" --batch-size 128 \
        --lr 2e-3 --schedule cosine --warmup-fraction 0.05 --label-smoothing 0.1 --patience 0 \
        --workers "$workers" --save-every 200 --keep-last 1
    if [ -f "$out/held/meta.json" ]; then held=(--data "$out/held"); else held=(--keep-data "$out/held"); fi
    [ -f "$out/styles/$m/styles.json" ] || $kanjirec bench styles --model "$run" --classes etl9g \
        "${held[@]}" --out "$out/styles/$m"
    runs+=("$run")
done
$kanjirec compare "${runs[@]}" --data "$out/data" --out "$out/compare"
$kanjirec ensemble "${runs[@]}" --data "$out/data" --out "$out/ensemble.json" --weighting best
$kanjirec bench styles --model "$out/ensemble.json" --data "$out/held" --out "$out/styles/ensemble"
