#!/usr/bin/env bash
# Cloud TPU VM pod slice (e.g. v4-32: 4 hosts): the same command on every
# worker; jax.distributed finds the pod through the TPU metadata server.
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b [PROJECT=my-project]
#   launch/tpu_vm_pod.sh setup                       # copy repo, pip install
#   launch/tpu_vm_pod.sh run CONFIG WORKDIR [main.py flags...]
#   launch/tpu_vm_pod.sh logs                        # tail every worker's log
#   launch/tpu_vm_pod.sh stop                        # stop the run (by pid file)
#
# WORKDIR must be shared by all workers (a Filestore/NFS mount or a gcsfuse
# mount of a bucket, e.g. /mnt/gcs/runs/dpsh); so must the data.
set -euo pipefail
: "${TPU_NAME:?export TPU_NAME}" "${ZONE:?export ZONE}"
REMOTE_DIR=${REMOTE_DIR:-medhash_jax}
GCLOUD=(gcloud compute tpus tpu-vm)
OPTS=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
on_all() {
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${OPTS[@]}" --worker=all --command="$1"
}
cmd=${1:-}; shift || true
case "$cmd" in
  setup)
    cd "$(dirname "$0")/.."
    tar czf /tmp/medhash_jax_src.tgz --exclude=.git --exclude=build \
      --exclude='*.so' --exclude=runs .
    "${GCLOUD[@]}" scp /tmp/medhash_jax_src.tgz "$TPU_NAME":/tmp/ "${OPTS[@]}" \
      --worker=all
    on_all "mkdir -p ~/$REMOTE_DIR && tar xzf /tmp/medhash_jax_src.tgz -C ~/$REMOTE_DIR \
      && pip install -U 'jax[tpu]' && pip install -e ~/$REMOTE_DIR"
    ;;
  run)
    [[ $# -ge 2 ]] || { echo "usage: $0 run CONFIG WORKDIR [flags...]"; exit 2; }
    CONFIG=$1; WORKDIR=$2; shift 2
    FLAGS=$(printf ' %q' "$@")
    on_all "cd ~/$REMOTE_DIR && nohup python3 -m medhash_jax.main --distributed=on \
      --config=$CONFIG --workdir=$WORKDIR $FLAGS > ~/medhash_run.log 2>&1 & \
      echo \$! > ~/medhash_run.pid"
    echo "started on every worker; logs: $0 logs"
    ;;
  logs)
    on_all "tail -n 20 ~/medhash_run.log"
    ;;
  stop)
    on_all "test -f ~/medhash_run.pid && kill \$(cat ~/medhash_run.pid) || true"
    ;;
  *)
    sed -n '2,14p' "$0"; exit 2
    ;;
esac
