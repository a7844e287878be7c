#!/bin/bash
# Issue #21 CPU-scale ablation: MTH's semantic term, the paper's projection
# CE vs the older pairwise regression, on the smoke config (BreastMNIST 28 px,
# tiny MTH, 16 bits, triplet sampling). Usage: run.sh STEPS SEED...
# Writes /tmp/seeds21_abl/<variant>_s<seed>/results.json.
set -u
steps=${1:-40}; shift
for seed in "${@:-0 1 2}"; do
  for sem in projection pairwise; do
    wd=/tmp/seeds21_abl/${sem}_s${seed}
    rm -rf "$wd"
    python -m medhash_jax.main --config=configs/mth.py:smoke --workdir="$wd" \
      --config.seed="$seed" --config.train.num_steps="$steps" \
      --config.train.eval_every_steps="$steps" \
      --config.train.checkpoint_every_steps="$steps" \
      --config.loss.kwargs.semantic="$sem" > "$wd.log" 2>&1 || echo "FAILED $wd"
  done
done
