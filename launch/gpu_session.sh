#!/usr/bin/env bash
# One GPU host, one call, a fixed time budget: everything the project can only
# measure on an accelerator. Each phase runs under its own time limit, so a
# slow or failing phase still leaves the others' results.
#
#   OUT=runs/gpu_session bash launch/gpu_session.sh
#   PHASES=env,step OUT=/tmp/o bash launch/gpu_session.sh
#   DRY=1 OUT=/tmp/o bash launch/gpu_session.sh       # CPU rehearsal, tiny sizes
#
# Phases (PHASES, comma-separated, in this order; default all):
#   env     versions, nvidia-smi, JAX devices, the C++ kernel
#   tests   tests/test_retrieval.py on the accelerator (the Pallas kernel
#           compiled for real, checked against the reference backend)
#   search  benchmarks/retrieval.py: gpu (Pallas) vs matmul vs cpu backends
#   step    benchmarks/train_step.py at 224 px, bfloat16 then float32
#           (DPSH and HashNet steps beside a plain ResNet-50 classifier)
#   sweep   benchmarks/sweep.py: a V = 8 sweep step (vmap and unroll) vs 8
#           sequential steps (issue #20's 3x goal, unmet on CPU)
#   table   the paper_gpu suite (HAM10000, 224 px, the methods' own configs)
#           for TABLE_METHODS at TABLE_BITS bits with TABLE_STEPS steps; if
#           the budget runs out mid-way, the report is written from the runs
#           that finished
#
# Settings (environment):
#   OUT            output folder (default runs/gpu_session); 7 files: log.txt,
#                  phases.json, retrieval.txt, train_step_bfloat16.json,
#                  train_step_float32.json, sweep.txt, table.tar.gz (the report and
#                  each run's results.json / metrics.jsonl)
#   BUDGET_S       seconds for the whole script (default 540)
#   WHEELS         folder of wheels installed first, for packages the host
#                  lacks (default .whl when it holds any; see
#                  launch/stage_gpu_session.sh)
#   MEDHASH_DATA_DIR  the data (default .devdata when present, else
#                  ../shared/data)
#   TABLE_METHODS  default hashnet,mth,sa_hash,ath,dpsh,csq (in this order)
#   TABLE_BITS     default 48;  TABLE_STEPS  default 600
#   TABLE_SET      extra --set=key=value flags for every table run
#   REPORT_S       seconds kept for writing the table's report (default 120)
#   DRY=1          CPU rehearsal of the whole script: 32 px, 2 steps, small
#                  benchmarks (checks the script, measures nothing)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
OUT="${OUT:-runs/gpu_session}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/log.txt"
PHASES="${PHASES:-env,tests,search,step,sweep,table}"
BUDGET_S="${BUDGET_S:-540}"
REPORT_S="${REPORT_S:-120}"
TABLE_METHODS="${TABLE_METHODS:-hashnet,mth,sa_hash,ath,dpsh,csq}"
TABLE_BITS="${TABLE_BITS:-48}"
TABLE_STEPS="${TABLE_STEPS:-600}"
TABLE_SET="${TABLE_SET:-}"
DRY="${DRY:-0}"
START=$(date +%s)
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
want() { [[ ",$PHASES," == *",$1,"* ]]; }

PHASE_JSON=()
# run_phase NAME CAP_SECONDS CMD...: runs CMD under min(CAP, budget left),
# output appended to the log; records rc and seconds.
run_phase() {
  local name="$1" cap="$2"; shift 2
  local limit; limit=$(left)
  (( limit > cap )) && limit=$cap
  if (( limit < 10 )); then
    log "phase $name: skipped, ${limit}s left"
    PHASE_JSON+=("\"$name\": {\"rc\": null, \"seconds\": 0, \"skipped\": true}")
    return 0
  fi
  log "phase $name: start (limit ${limit}s): $*"
  local t0 rc; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  log "phase $name: rc=$rc in ${dt}s$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)')"
  PHASE_JSON+=("\"$name\": {\"rc\": $rc, \"seconds\": $dt, \"limit\": $limit}")
  return 0
}

write_phases() {
  local IFS=,
  echo "{${PHASE_JSON[*]}}" >"$OUT/phases.json"
}
trap write_phases EXIT

# --- environment -------------------------------------------------------------
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/medhash_site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/medhash_site "$WHEELS"/*.whl >>"$LOG" 2>&1 \
    || log "wheel install failed (see above)"
  export PYTHONPATH="/tmp/medhash_site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z "${MEDHASH_DATA_DIR:-}" ]]; then
  if [[ -d .devdata ]]; then export MEDHASH_DATA_DIR="$REPO/.devdata";
  else export MEDHASH_DATA_DIR="$(cd .. && pwd)/shared/data"; fi
fi
log "repo $REPO at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), data $MEDHASH_DATA_DIR, budget ${BUDGET_S}s, phases $PHASES, dry=$DRY"

if [[ "$DRY" == 1 ]]; then
  SEARCH_ARGS=(--n 20000 --q 100 --bits 64 --k 10 --repeats 1)
  STEP_ARGS=(--sizes=32 --batch_size=4 --steps=1 --repeats=1)
  SWEEP_ARGS=(--variants=2 --steps=1 --rounds=1)
  TABLE_STEPS=2
  TABLE_SET="--set=data.image_size=32 --set=data.num_workers=0 --set=data.eval_batch_size=64 $TABLE_SET"
else
  SEARCH_ARGS=(--n 10000000 --q 1000 --bits 64 --k 100 --repeats 3)
  STEP_ARGS=(--sizes=224 --batch_size=64 --steps=20 --repeats=3)
  SWEEP_ARGS=(--variants=8 --steps=10 --rounds=5)
fi

if want env; then
  run_phase env 120 bash -c '
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    '"$PY"' - <<EOF
import importlib, platform
print("python", platform.python_version(), platform.platform())
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain",
          "ml_collections", "skimage", "numpy", "absl"):
  try:
    mod = importlib.import_module(m)
    print(f"{m:18s}", getattr(mod, "__version__", "?"))
  except Exception as e:  # report every missing package, not just the first
    print(f"{m:18s} MISSING: {e}")
import jax
print("devices", jax.devices())
from medhash_jax import retrieval
print("C++ kernel available:", retrieval.cpu_kernel_available())
EOF'
fi

if want tests; then
  run_phase tests 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_retrieval.py
fi

if want search; then
  run_phase search 120 bash -c "$PY benchmarks/retrieval.py ${SEARCH_ARGS[*]} | tee '$OUT/retrieval.txt'"
fi

if want step; then
  for dtype in bfloat16 float32; do
    run_phase "step_$dtype" 150 "$PY" benchmarks/train_step.py "${STEP_ARGS[@]}" \
      --dtype="$dtype" --methods=dpsh,hashnet --json="$OUT/train_step_$dtype.json"
  done
fi

if want sweep; then
  run_phase sweep 200 bash -c "$PY benchmarks/sweep.py ${SWEEP_ARGS[*]} --strategies=vmap,unroll | tee '$OUT/sweep.txt'"
fi

if want table; then
  TABLE_WD="runs/gpu_session_table"
  TABLE_OUT="$OUT/table"
  TABLE_ARGS=(--suite=paper_gpu --bits="$TABLE_BITS" --seeds=0
              --steps="$TABLE_STEPS" --workdir="$TABLE_WD" --output="$TABLE_OUT")
  # shellcheck disable=SC2206
  TABLE_ARGS+=($TABLE_SET)
  budget=$(( $(left) - REPORT_S ))
  run_phase table "$budget" "$PY" -m medhash_jax.experiments \
    --methods="$TABLE_METHODS" "${TABLE_ARGS[@]}"
  if [[ ! -f "$TABLE_OUT/results.md" ]]; then
    # Out of time mid-way: the report from the runs that finished.
    done_methods=$(IFS=,; for m in $TABLE_METHODS; do
      [[ -f "$TABLE_WD/${m//:/-}/b${TABLE_BITS}-s0/results.json" ]] && printf '%s,' "$m"
    done)
    done_methods="${done_methods%,}"
    if [[ -n "$done_methods" ]]; then
      run_phase table_report "$(left)" "$PY" -m medhash_jax.experiments \
        --methods="$done_methods" "${TABLE_ARGS[@]}"
    else
      log "table: no run finished"
    fi
  fi
  # Each run's own record (results, metrics, ATH stages) beside the report.
  if [[ -d "$TABLE_WD" ]]; then
    mkdir -p "$TABLE_OUT/runs"
    (cd "$TABLE_WD" && find . -maxdepth 5 \( -name results.json -o -name \
      metrics.jsonl -o -name ath_stages.json -o -name best.json \) \
      -exec cp --parents {} "$TABLE_OUT/runs/" \;)
    tar -czf "$OUT/table.tar.gz" -C "$OUT" table 2>>"$LOG" && rm -rf "$TABLE_OUT"
  fi
  log "table: $(ls -la "$OUT/table.tar.gz" 2>/dev/null || echo 'no archive')"
fi
log "done"
