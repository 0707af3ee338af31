#!/usr/bin/env bash
# Install dale_langevin on every worker of a TPU VM (single host or pod slice).
#
# On each worker: a virtualenv (VENV) on Python PYTHON_BIN (installed with apt if missing:
# tpu-ubuntu2204-base ships Python 3.10, the package needs >= 3.11), `pip install -U "jax[tpu]"`,
# the code (git clone of REPO_URL at REPO_REF, or this local checkout copied with scp), then
# `pip install -e .[EXTRAS]`, and finally a check that prints jax.device_count() on every worker.
#
# Settings (environment variables):
#   PROJECT, ZONE     required  as for tpu_create.sh
#   TPU_NAME          default dale-langevin
#   REPO_URL          default empty = copy the local checkout (tracked + untracked, not ignored,
#                     files of LOCAL_REPO; uncommitted edits included). Set it to clone instead,
#                     e.g. https://github.com/ORG/dale_langevin.git (must be readable from the VM).
#   REPO_REF          default main; branch, tag or commit to check out when REPO_URL is set
#   LOCAL_REPO        default: the repository containing this script
#   REMOTE_DIR        default dale_langevin; code directory on the workers, relative to $HOME
#                     (replaced on every run)
#   VENV              default dale-venv; virtualenv on the workers, relative to $HOME
#   PYTHON_BIN        default python3.11; interpreter for the virtualenv
#   INSTALL_PYTHON    default 1; apt-get install PYTHON_BIN and PYTHON_BIN-venv when missing
#   JAX_SPEC          default "jax[tpu]"
#   EXTRAS            default tf: the package's extras, comma-separated (tf: Inception-V3 FID/KID and
#                     TFDS preparation); empty installs without TensorFlow (training needs none)
#
# Pod slices: ssh to all workers needs your key in the agent first:
#   eval "$(ssh-agent -s)" && ssh-add ~/.ssh/google_compute_engine
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project}"
: "${ZONE:?set ZONE to the zone of the TPU VM}"
TPU_NAME="${TPU_NAME:-dale-langevin}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
LOCAL_REPO="${LOCAL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
REMOTE_DIR="${REMOTE_DIR:-dale_langevin}"
VENV="${VENV:-dale-venv}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
INSTALL_PYTHON="${INSTALL_PYTHON:-1}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
EXTRAS="${EXTRAS-tf}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case "$REMOTE_DIR" in
  "" | /* | *..*) echo "error: REMOTE_DIR must be a relative path under \$HOME without '..'" >&2; exit 2 ;;
esac

step "1/4 Python $PYTHON_BIN, virtualenv ~/$VENV and $JAX_SPEC on all workers"
on_workers all VENV PYTHON_BIN INSTALL_PYTHON JAX_SPEC <<'EOF'
cd "$HOME"
if ! command -v "$PYTHON_BIN" >/dev/null; then
  [ "$INSTALL_PYTHON" = 1 ] || { echo "$(hostname): $PYTHON_BIN not found" >&2; exit 1; }
  apt_get() { sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
  apt_get update -qq
  apt_get install -y -qq "$PYTHON_BIN" "$PYTHON_BIN-venv"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip
"$VENV/bin/python" -m pip install -q -U "$JAX_SPEC"
echo "$(hostname): $("$VENV/bin/python" --version), jax $("$VENV/bin/python" -c 'import jax; print(jax.__version__)')"
EOF

if [[ -n "$REPO_URL" ]]; then
  step "2/4 Cloning $REPO_URL at $REPO_REF into ~/$REMOTE_DIR on all workers"
  on_workers all REMOTE_DIR REPO_URL REPO_REF <<'EOF'
cd "$HOME"
rm -rf "$REMOTE_DIR"
git init -q "$REMOTE_DIR"
git -C "$REMOTE_DIR" remote add origin "$REPO_URL"
git -C "$REMOTE_DIR" fetch -q --depth 1 origin "$REPO_REF"
git -C "$REMOTE_DIR" checkout -q FETCH_HEAD
echo "$(hostname): $(git -C "$REMOTE_DIR" rev-parse --short HEAD)"
EOF
else
  step "2/4 Copying local checkout $LOCAL_REPO to ~/$REMOTE_DIR on all workers"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # Tracked and untracked-but-not-ignored files that exist (skips tracked files deleted locally).
  (cd "$LOCAL_REPO" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [[ -f "$f" ]]; then printf '%s\0' "$f"; fi; done |
    tar -czf "$tmp/src.tar.gz" --null -T -)
  echo "archive: $(du -h "$tmp/src.tar.gz" | cut -f1)"
  gtpu scp "$tmp/src.tar.gz" "$TPU_NAME:dale_langevin_src.tar.gz" --worker=all
  on_workers all REMOTE_DIR <<'EOF'
cd "$HOME"
rm -rf "$REMOTE_DIR"
mkdir -p "$REMOTE_DIR"
tar -xzf dale_langevin_src.tar.gz -C "$REMOTE_DIR"
rm -f dale_langevin_src.tar.gz
echo "$(hostname): $(find "$REMOTE_DIR" -type f | wc -l) files"
EOF
fi

step "3/4 pip install -e .${EXTRAS:+[$EXTRAS]} on all workers"
on_workers all REMOTE_DIR VENV EXTRAS <<'EOF'
cd "$HOME/$REMOTE_DIR"
"$HOME/$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
echo "$(hostname): installed"
EOF

step "4/4 jax.device_count() on all workers (each prints the global count)"
on_workers all VENV <<'EOF'
"$HOME/$VENV/bin/python" -c 'import jax, socket
print(socket.gethostname(), "process", jax.process_index(), "of", jax.process_count(),
      "| local devices", jax.local_device_count(), "| global devices", jax.device_count())'
EOF
echo "Next: launch/tpu_train.sh"
