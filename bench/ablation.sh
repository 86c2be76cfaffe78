#!/usr/bin/env bash
# The model card's ablation table: each ingredient of the shipped recipe on or off at a reduced budget
# (5,000 reviews per class, 2 epochs, 1 thread: ~4-8 min a row). Same slice, seed and schedule in every row.
# Usage: bash bench/ablation.sh [OUT_DIR]   (from the repository root; the data paths are the project machines')
set -euo pipefail
out=${1:-bench/results/ablation}
mkdir -p "$out"
common=(--data ../shared/data/aclImdb.tar.gz --cad-dir ../shared/data/cad --limit 5000 --epochs 2 --threads 1)
lm=(--lm --lm-tokens 2000000 --lm-cache "$out/lm-cache.pt")  # pre-trained once, then served from the cache
run() {
    local name=$1; shift
    python -m training "${common[@]}" --out "$out/$name/sentiment.pt" "$@" > "$out/$name.log" 2>&1
    echo "$name: $(tr '\r' '\n' < "$out/$name.log" | grep -E 'epoch [0-9]+:|CAD dev:' | sed 's/^.*training\.[a-z]*: //' | tr '\n' ' ')"
}
run base
run no_cad --no-cad
run no_word2vec --no-word2vec
run pair_term --pair-weight 0.5
run lm "${lm[@]}"
run lm_decay "${lm[@]}" --lr-decay 2.6
run lm_unfreeze "${lm[@]}" --lr-decay 2.6 --unfreeze --epochs 3
run adversarial_002 --adversarial 0.02
run adversarial_0005 --adversarial 0.005
run vocab_60k --vocab-size 60000
run pool_max --pooling max
run pool_mean --pooling mean
run pool_last --pooling last
run distill --distill --distill-epochs 1
