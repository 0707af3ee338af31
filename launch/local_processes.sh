#!/usr/bin/env bash
# Run main as N JAX processes on this machine (CPU collectives over gloo, coordinator on 127.0.0.1):
# the multi-process path of a pod or cluster, on one host. Process 0 prints to the terminal, the
# others to $LOG_DIR/process-<i>.log. SIGTERM (or Ctrl-C) is passed to every process: training
# saves the step it is at and exits 143; run the same command again to resume.
# tests/test_multiprocess.py runs these same processes (2 x 2 devices against 1 x 4).
#
# Settings (environment variables):
#   WORKDIR           required  local directory or gs://BUCKET/PATH (shared by the processes)
#   CONFIG            default configs/demo.py (path inside the repository)
#   MODE              default train; or sample, eval
#   NUM_PROCESSES     default 2
#   DEVICES           default 1; CPU devices per process (--config.host_device_count)
#   PORT              default 12355; the coordinator's port on 127.0.0.1
#   LOG_DIR           default . ; where processes 1..N-1 write their output
#   EXTRA_FLAGS       default empty; more flags, split on spaces, e.g. "--config.training.n_iters=2000"
#   PYTHON            default python3
#
# On GPU hosts of a cluster run one process per host instead, each with
#   python -m dale_langevin.main ... --multihost --coordinator_address=HOST0:PORT \
#     --num_processes=N --process_id=I
# (SLURM and TPU pods need only --multihost: JAX finds the cluster itself).
#
# Usage: WORKDIR=/tmp/run NUM_PROCESSES=2 DEVICES=2 launch/local_processes.sh
set -euo pipefail

: "${WORKDIR:?set WORKDIR to a local directory or gs://BUCKET/PATH}"
CONFIG="${CONFIG:-configs/demo.py}"
MODE="${MODE:-train}"
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES="${DEVICES:-1}"
PORT="${PORT:-12355}"
LOG_DIR="${LOG_DIR:-.}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
PYTHON="${PYTHON:-python3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$MODE" in train | sample | eval) ;; *) echo "error: MODE must be train, sample or eval, not '$MODE'" >&2; exit 2 ;; esac
[[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || { echo "error: NUM_PROCESSES must be a positive integer" >&2; exit 2; }
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICES must be a positive integer" >&2; exit 2; }
cd "$REPO"
[[ -f "${CONFIG%%:*}" ]] || { echo "error: no config ${CONFIG%%:*} in $REPO" >&2; exit 2; }

flags=(--config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE" --config.host_device_count="$DEVICES"
  --multihost --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES")
if [[ -n "$EXTRA_FLAGS" ]]; then
  read -r -a extra <<<"$EXTRA_FLAGS"
  flags+=("${extra[@]}")
fi
unset XLA_FLAGS  # each process asks for its own device count

mkdir -p "$LOG_DIR"
pids=()
# shellcheck disable=SC2317  # called by the trap
forward() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap forward TERM INT
for ((i = 0; i < NUM_PROCESSES; i++)); do
  if ((i == 0)); then
    "$PYTHON" -m dale_langevin.main "${flags[@]}" --process_id=0 &
  else
    "$PYTHON" -m dale_langevin.main "${flags[@]}" --process_id="$i" >"$LOG_DIR/process-$i.log" 2>&1 &
  fi
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do  # a trapped signal interrupts wait: wait again
    wait "$pid" && code=0 || code=$?
  done
  wait "$pid" 2>/dev/null && code=0 || code=$?
  ((code == 0)) || status=$code
done
exit "$status"
