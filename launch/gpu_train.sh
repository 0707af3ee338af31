#!/usr/bin/env bash
# Train (or sample) on one machine with all of its local GPUs. main uses pmap over every local
# device, so no launcher or --multihost is needed; run this from anywhere on the GPU machine.
#
# Settings (environment variables):
#   WORKDIR           required  local directory or gs://BUCKET/PATH
#   CONFIG            default configs/mnist.py (path inside the repository)
#   MODE              default train; or sample, eval, ablate (see python -m dale_langevin.main --help)
#   DATA_DIR          default empty (config default); TFDS data dir, passed as --config.data.data_dir
#   EXTRA_FLAGS       default empty; more flags, split on spaces, e.g. "--config.training.n_iters=2000"
#   PYTHON            default python3 (activate your virtualenv first, or point this at it)
#   INSTALL           default 0; 1 first runs: pip install -U "$JAX_SPEC" and pip install -e <repo>
#   JAX_SPEC          default "jax[cuda12]"
#   EXTRAS            default tf: with INSTALL=1, the package's extras (tf: Inception-V3 FID/KID and
#                     TFDS preparation); empty installs without TensorFlow (training needs none)
#   XLA_PYTHON_CLIENT_MEM_FRACTION  optional; share of each GPU's memory JAX preallocates
#                     (JAX default 0.75), e.g. 0.9 for larger batches, or lower it when the GPUs
#                     are shared. XLA_PYTHON_CLIENT_PREALLOCATE=false turns preallocation off.
#   CUDA_VISIBLE_DEVICES  optional, passed through: pick GPUs, e.g. CUDA_VISIBLE_DEVICES=0,1;
#                     unset = all GPUs. The global batch must divide by the number of GPUs used.
#
# Usage: WORKDIR=runs/mnist CONFIG=configs/mnist.py launch/gpu_train.sh
set -euo pipefail

: "${WORKDIR:?set WORKDIR to a local directory or gs://BUCKET/PATH}"
CONFIG="${CONFIG:-configs/mnist.py}"
MODE="${MODE:-train}"
DATA_DIR="${DATA_DIR:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
PYTHON="${PYTHON:-python3}"
INSTALL="${INSTALL:-0}"
JAX_SPEC="${JAX_SPEC:-jax[cuda12]}"
EXTRAS="${EXTRAS-tf}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case "$MODE" in train | sample | eval | ablate) ;; *) echo "error: MODE must be train, sample, eval or ablate, not '$MODE'" >&2; exit 2 ;; esac
cd "$REPO"
[[ -f "${CONFIG%%:*}" ]] || { echo "error: no config ${CONFIG%%:*} in $REPO" >&2; exit 2; }

if [[ "$INSTALL" == 1 ]]; then
  step "Installing $JAX_SPEC and the package (editable) with $PYTHON"
  "$PYTHON" -m pip install -U "$JAX_SPEC"
  "$PYTHON" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"
fi

step "Devices (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset: all>}, XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION-<default>})"
"$PYTHON" -c 'import jax; print(jax.device_count(), "devices:", jax.devices())'

flags=(--config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE")
[[ -n "$DATA_DIR" ]] && flags+=(--config.data.data_dir="$DATA_DIR")
if [[ -n "$EXTRA_FLAGS" ]]; then
  read -r -a extra <<<"$EXTRA_FLAGS"
  flags+=("${extra[@]}")
fi
step "$PYTHON -m dale_langevin.main ${flags[*]}"
exec "$PYTHON" -m dale_langevin.main "${flags[@]}"
