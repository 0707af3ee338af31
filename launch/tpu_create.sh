#!/usr/bin/env bash
# Create a Cloud TPU VM: a single host (e.g. v4-8) or a pod slice (e.g. v4-32).
#
# Settings (environment variables):
#   PROJECT           required  GCP project id
#   ZONE              required  zone with TPU quota, e.g. us-central2-b (v4)
#   TPU_NAME          default dale-langevin
#   ACCELERATOR_TYPE  default v4-8  (v4-8: 1 host; v4-32: 4 hosts)
#   RUNTIME_VERSION   default tpu-ubuntu2204-base  (list: gcloud compute tpus tpu-vm versions list --zone=ZONE)
#   SPOT              default 0; 1 adds --spot (cheap, may be preempted at any time)
#   PREEMPTIBLE       default 0; 1 adds --preemptible (older preemptible model; not with SPOT=1)
#   CREATE_FLAGS      default empty; more flags for `tpu-vm create`, split on spaces,
#                     e.g. "--service-account=SA@PROJECT.iam.gserviceaccount.com --labels=team=x"
#
# Usage: PROJECT=my-proj ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 launch/tpu_create.sh
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project}"
: "${ZONE:?set ZONE to a zone with TPU quota, e.g. us-central2-b}"
TPU_NAME="${TPU_NAME:-dale-langevin}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
CREATE_FLAGS="${CREATE_FLAGS:-}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

args=(
  "$TPU_NAME"
  --project="$PROJECT"
  --zone="$ZONE"
  --accelerator-type="$ACCELERATOR_TYPE"
  --version="$RUNTIME_VERSION"
)
if [[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]]; then
  echo "error: set at most one of SPOT=1 and PREEMPTIBLE=1" >&2
  exit 2
fi
[[ "$SPOT" == 1 ]] && args+=(--spot)
[[ "$PREEMPTIBLE" == 1 ]] && args+=(--preemptible)
if [[ -n "$CREATE_FLAGS" ]]; then
  read -r -a extra <<<"$CREATE_FLAGS"
  args+=("${extra[@]}")
fi

step "Creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $PROJECT/$ZONE"
echo "+ gcloud compute tpus tpu-vm create ${args[*]}"
gcloud compute tpus tpu-vm create "${args[@]}"

step "Workers (one internal IP per host)"
gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
  --format='value(acceleratorType,state,networkEndpoints.len())'
echo "Next: launch/tpu_setup.sh"
