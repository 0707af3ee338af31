#!/usr/bin/env bash
# Run dale_langevin.main on every worker of a TPU VM, in the background, and watch it.
#
# Usage: launch/tpu_train.sh [start|logs|status|stop]      (default: start)
#   start   launch `python -m dale_langevin.main` on all workers with nohup; output goes to
#           ~/$MODE.log on each worker (~/train.log, ~/sample.log), the process id to ~/$MODE.pid
#   logs    follow ~/$MODE.log of worker LOG_WORKER (default 0) with tail -F; Ctrl-C stops watching
#           only, the run goes on
#   status  on all workers: running or not, and the last lines of the log
#   stop    on all workers: SIGTERM the process group started by `start` (by the id in ~/$MODE.pid);
#           training saves the step it is at and exits with status 143; `start` again resumes there
#
# Settings (environment variables):
#   PROJECT, ZONE     required  as for tpu_create.sh
#   TPU_NAME          default dale-langevin
#   WORKDIR           required for start: gs://BUCKET/PATH (checkpoints, summaries, samples);
#                     every worker must see the same directory, so use GCS, not a local path
#   CONFIG            default configs/mnist.py (path inside the repository)
#   MODE              default train; or sample, eval (read checkpoints from WORKDIR), ablate (an ablation config)
#   DATA_DIR          default empty (config default); gs://BUCKET/tensorflow_datasets, passed as
#                     --config.data.data_dir; prepared as ArrayRecord files
#                     (tfds build NAME --data_dir=DIR --file_format=array_record)
#   EXTRA_FLAGS       default empty; more flags, split on spaces, e.g. "--config.training.n_iters=2000"
#   MULTIHOST         default auto: pass --multihost when the TPU has more than one host (v4-32 and
#                     larger: main then calls jax.distributed.initialize()); 1 always, 0 never
#   REMOTE_DIR, VENV  defaults dale_langevin and dale-venv, as in tpu_setup.sh
#   LOG_WORKER        default 0; worker whose log `logs` follows
#   TAIL_LINES        default 100; lines shown by `logs` before following, and 5x fewer by `status`
#
# Pod slices: ssh to all workers needs your key in the agent first:
#   eval "$(ssh-agent -s)" && ssh-add ~/.ssh/google_compute_engine
set -euo pipefail

ACTION="${1:-start}"
: "${PROJECT:?set PROJECT to your GCP project}"
: "${ZONE:?set ZONE to the zone of the TPU VM}"
TPU_NAME="${TPU_NAME:-dale-langevin}"
CONFIG="${CONFIG:-configs/mnist.py}"
MODE="${MODE:-train}"
DATA_DIR="${DATA_DIR:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
MULTIHOST="${MULTIHOST:-auto}"
REMOTE_DIR="${REMOTE_DIR:-dale_langevin}"
VENV="${VENV:-dale-venv}"
LOG_WORKER="${LOG_WORKER:-0}"
TAIL_LINES="${TAIL_LINES:-100}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case "$MODE" in train | sample | eval | ablate) ;; *) echo "error: MODE must be train, sample, eval or ablate, not '$MODE'" >&2; exit 2 ;; esac

case "$ACTION" in
start)
  : "${WORKDIR:?set WORKDIR to a gs://BUCKET/PATH shared by all workers}"
  [[ "$WORKDIR" == gs://* ]] || echo "warning: WORKDIR=$WORKDIR is not on GCS; on a pod every worker needs the same directory" >&2
  flags=(--config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE")
  [[ -n "$DATA_DIR" ]] && flags+=(--config.data.data_dir="$DATA_DIR")
  if [[ "$MULTIHOST" == auto ]]; then
    hosts="$(gtpu describe "$TPU_NAME" --format='value(networkEndpoints.len())')"
    echo "$TPU_NAME has $hosts host(s)"
    if ((hosts > 1)); then MULTIHOST=1; else MULTIHOST=0; fi
  fi
  [[ "$MULTIHOST" == 1 ]] && flags+=(--multihost)
  if [[ -n "$EXTRA_FLAGS" ]]; then
    read -r -a extra <<<"$EXTRA_FLAGS"
    flags+=("${extra[@]}")
  fi
  step "Starting on all workers: python -m dale_langevin.main ${flags[*]}"
  on_workers all REMOTE_DIR VENV MODE CONFIG flags <<'EOF'
cd "$HOME/$REMOTE_DIR"
[ -f "${CONFIG%%:*}" ] || { echo "$(hostname): no ${CONFIG%%:*} in ~/$REMOTE_DIR (run tpu_setup.sh)" >&2; exit 1; }
if [ -f "$HOME/$MODE.pid" ] && kill -0 "$(cat "$HOME/$MODE.pid")" 2>/dev/null; then
  echo "$(hostname): a $MODE run is still going (pid $(cat "$HOME/$MODE.pid")); use: tpu_train.sh stop" >&2
  exit 1
fi
# setsid: own process group (for `stop`) and no tie to this ssh session; nohup: ignore SIGHUP.
setsid nohup "$HOME/$VENV/bin/python" -m dale_langevin.main "${flags[@]}" >"$HOME/$MODE.log" 2>&1 </dev/null &
echo $! >"$HOME/$MODE.pid"
echo "$(hostname): started pid $!, log ~/$MODE.log"
EOF
  echo "Watch worker $LOG_WORKER: ${0} logs   (MODE=$MODE)"
  ;;
logs)
  step "Following ~/$MODE.log on worker $LOG_WORKER (Ctrl-C stops watching, not the run)"
  on_workers "$LOG_WORKER" MODE TAIL_LINES <<'EOF'
tail -n "$TAIL_LINES" -F "$HOME/$MODE.log"
EOF
  ;;
status)
  step "Status of $MODE on all workers"
  on_workers all MODE TAIL_LINES <<'EOF'
pid="$(cat "$HOME/$MODE.pid" 2>/dev/null || true)"
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then state="running (pid $pid)"; else state="not running"; fi
echo "== $(hostname): $MODE $state"
tail -n "$((TAIL_LINES / 5))" "$HOME/$MODE.log" 2>/dev/null || true
EOF
  ;;
stop)
  step "Stopping $MODE on all workers"
  on_workers all MODE <<'EOF'
pid="$(cat "$HOME/$MODE.pid" 2>/dev/null || true)"
# Only a live process that still leads its own group (as `start` made it) is ours.
if [ -n "$pid" ] && [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then
  kill -TERM -- "-$pid"
  echo "$(hostname): sent SIGTERM to process group $pid"
else
  echo "$(hostname): no $MODE run"
fi
rm -f "$HOME/$MODE.pid"
EOF
  ;;
*)
  echo "usage: $0 [start|logs|status|stop]" >&2
  exit 2
  ;;
esac
