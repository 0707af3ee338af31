#!/usr/bin/env bash
# Lint the launch scripts: bash -n (syntax) and shellcheck on launch/*.sh. Exit status 1 on any
# problem, 2 when shellcheck is missing (Debian/Ubuntu: apt-get install -y shellcheck).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
command -v shellcheck >/dev/null || { echo "error: shellcheck not found (apt-get install -y shellcheck)" >&2; exit 2; }

status=0
for f in ./*.sh; do
  if bash -n "$f" && shellcheck -x "$f"; then
    echo "ok    $f"
  else
    echo "FAIL  $f"
    status=1
  fi
done
exit "$status"
