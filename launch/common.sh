# Shared helpers for the launch scripts; sourced, not run. Needs PROJECT, ZONE, TPU_NAME for gtpu/on_workers.
# shellcheck shell=bash

step() { printf '\n==> %s\n' "$*"; }

gtpu() { gcloud compute tpus tpu-vm "$1" --project="$PROJECT" --zone="$ZONE" "${@:2}"; }

# on_workers WORKERS VAR... <<'EOF' ... EOF: run the bash script on stdin on the given workers
# ("all", "0", "1-3"), after `set -euo pipefail` and the named variables (scalars or arrays, via
# declare -p). base64 keeps all quoting intact through gcloud, ssh and the remote login shell.
on_workers() {
  local workers="$1" script b64
  shift
  script="set -euo pipefail"$'\n'"$(declare -p "$@")"$'\n'"$(cat)"
  b64="$(printf '%s\n' "$script" | base64 | tr -d '\n')"
  gtpu ssh "$TPU_NAME" --worker="$workers" --command="echo $b64 | base64 -d | bash" </dev/null
}
