#!/usr/bin/env bash
# Prepares this checkout for launch/gpu_session.sh on a GPU host that has
# JAX, flax, optax, orbax and scikit-image but no network (this workplace's
# lent H200: Python 3.12): wheels of the packages it lacks go to .whl/ and
# the HAM10000 data to .devdata/ (both git-ignored; carry both).
#
#   bash launch/stage_gpu_session.sh [PYTHON_VERSION]   # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
mkdir -p .whl
# Pinned to the versions the project is tested with (setup.py's installs).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker==1.6.0
DATA="${MEDHASH_DATA_DIR:-../shared/data}"
mkdir -p .devdata
rm -rf .devdata/ham10000
cp -r "$DATA/ham10000" .devdata/
du -sh .whl .devdata
echo "carry: [\".whl\", \".devdata\"]; command: OUT=\$OUT bash launch/gpu_session.sh"
