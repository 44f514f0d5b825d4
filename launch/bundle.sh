#!/usr/bin/env bash
# Packs the working tree as the launchers ship it to remote hosts: the files git tracks plus the
# untracked ones it does not ignore, so uncommitted edits go along while .venv/, out/ and other
# ignored outputs stay behind.
#
#   launch/bundle.sh OUT.tar.gz
set -euo pipefail
(($# == 1)) || { echo "usage: launch/bundle.sh OUT.tar.gz" >&2; exit 2; }
out=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cd "$(dirname "$0")/.."
# A tracked file deleted in the working tree is still listed by git: skip what is not there.
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -czf "$out"
