#!/usr/bin/env bash
# Full-scale run on all 3,036 ETL9G classes of synthetic handwriting: make the data, train
# the CNN and the hybrid CNN-RNN, print their test metrics. Meant for a GPU machine; runs
# anywhere. Usage: scripts/full_etl9g.sh OUT_DIR [PER_CLASS] [CNN_EPOCHS] [HYBRID_EPOCHS]
set -euo pipefail
out=${1:?usage: full_etl9g.sh OUT_DIR [PER_CLASS] [CNN_EPOCHS] [HYBRID_EPOCHS]}
per_class=${2:-60}
cnn_epochs=${3:-6}
hybrid_epochs=${4:-5}
kanjirec=${KANJIREC:-kanjirec}
workers=$(nproc)

$kanjirec data synth --charset etl9g --per-class "$per_class" --out "$out/etl9g_synth" \
    --workers "$workers" ${SYNTH_ARGS:-}
$kanjirec data info "$out/etl9g_synth"
for spec in "cnn $cnn_epochs" "hybrid_cnn_rnn $hybrid_epochs"; do
    set -- $spec
    $kanjirec train --model "$1" --data "$out/etl9g_synth" --out-dir "$out/runs" --epochs "$2" \
        --batch-size 256 --lr 2e-3 --workers 8 --save-every 0 --no-resume ${TRAIN_ARGS:-}
done
