#!/usr/bin/env bash
# Delete a TPU VM (all its workers and their local disks; WORKDIR on GCS is kept).
#
# Settings (environment variables):
#   PROJECT, ZONE     required  as for tpu_create.sh
#   TPU_NAME          default dale-langevin
#   FORCE             default 0 = ask for confirmation; 1 = delete without asking
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project}"
: "${ZONE:?set ZONE to the zone of the TPU VM}"
TPU_NAME="${TPU_NAME:-dale-langevin}"
FORCE="${FORCE:-0}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

step "TPU VM to delete"
gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
  --format='value(name,acceleratorType,state,networkEndpoints.len())'

if [[ "$FORCE" != 1 ]]; then
  [[ -t 0 ]] || { echo "error: no terminal to confirm on; set FORCE=1 to delete without asking" >&2; exit 2; }
  read -r -p "Delete TPU VM '$TPU_NAME' in $PROJECT/$ZONE? Type the name to confirm: " answer
  [[ "$answer" == "$TPU_NAME" ]] || { echo "Not deleted."; exit 1; }
fi

step "Deleting $TPU_NAME"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
echo "Deleted $TPU_NAME."
