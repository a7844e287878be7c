#!/usr/bin/env bash
# One host, all its GPUs (or TPU cores), one process: no jax.distributed.
#
#   launch/single_host.sh CONFIG WORKDIR [main.py flags...]
#   launch/single_host.sh configs/dpsh.py runs/dpsh --config.train.batch_size=256
#   GPUS=0,1,2,3 launch/single_host.sh configs/mth.py runs/mth    # a subset
#
# The mesh spans every visible device; the global batch (train.batch_size)
# must be divisible by their number. Logs go to WORKDIR/train.log as well.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
if [[ -n "${GPUS:-}" ]]; then
  export CUDA_VISIBLE_DEVICES=$GPUS
fi
mkdir -p "$WORKDIR"
python -m medhash_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --distributed=off "$@" 2>&1 | tee -a "$WORKDIR/train.log"
