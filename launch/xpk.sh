#!/usr/bin/env bash
# Training on TPU slices of a GKE cluster made with XPK (github.com/AI-Hypercomputer/xpk):
# `xpk workload create` builds an image of this working tree on a base image (docker, here),
# and every host of the slices runs the same command in it. Creates no cluster.
usage() {
  cat <<'EOF'
Usage: launch/xpk.sh -c CLUSTER -w WORKLOAD -t TPU_TYPE [-n SLICES] [-i BASE_IMAGE]
                     [-r MAX_RESTARTS] [-m STORAGE]... -- TRAIN_ARGS...

  -c CLUSTER     the XPK cluster
  -w WORKLOAD    a new workload name (lower case, digits, '-')
  -t TPU_TYPE    e.g. v5p-64, v6e-16 (the cluster's node pools)
  -n SLICES      number of slices (default 1)
  -i BASE_IMAGE  the image the code is layered on (default: xpk's python:3.10); one with the
                 dependencies installed starts faster, since every host installs at each start
  -r RESTARTS    times the JobSet restarts after a failure (default 0); each restart runs the
                 same command, which resumes from the workdir's latest checkpoint
  -m STORAGE     storage attached with `xpk storage attach` to mount (repeatable): the
                 workdir and the data must be on one all hosts see
  -h             this help
PROJECT and ZONE, when set, are passed on as --project and --zone. Every host runs
  pip install -e . jax[tpu] && launch/worker.sh TRAIN_ARGS
EOF
}
set -euo pipefail

cluster="" workload="" tpu_type="" slices=1 image="" restarts=0 storage=()
while getopts "c:w:t:n:i:r:m:h" opt; do
  case $opt in
    c) cluster=$OPTARG ;;
    w) workload=$OPTARG ;;
    t) tpu_type=$OPTARG ;;
    n) slices=$OPTARG ;;
    i) image=$OPTARG ;;
    r) restarts=$OPTARG ;;
    m) storage+=(--storage="$OPTARG") ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [[ -z $cluster || -z $workload || -z $tpu_type ]] || (($# == 0)); then
  usage >&2
  exit 2
fi

# (${a[@]+"${a[@]}"}: an empty array under `set -u` in the bash 3.2 that macOS ships.)
flags=(--cluster="$cluster" --workload="$workload" --tpu-type="$tpu_type" --num-slices="$slices"
       --max-restarts="$restarts" ${storage[@]+"${storage[@]}"})
if [[ -n $image ]]; then flags+=(--base-docker-image="$image"); fi
if [[ -n ${PROJECT:-} ]]; then flags+=(--project="$PROJECT"); fi
if [[ -n ${ZONE:-} ]]; then flags+=(--zone="$ZONE"); fi

# xpk copies --script-dir into the image whole: give it the shipped files only, not .venv/ or out/.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$(dirname "$0")/bundle.sh" "$tmp/code.tar.gz"
mkdir "$tmp/code"
tar -xzf "$tmp/code.tar.gz" -C "$tmp/code"

# exec: xpk's wrapper forwards SIGTERM (preemption, `xpk workload delete`) to this command's
# process, which is then the trainer itself: it saves a checkpoint and exits.
xpk workload create "${flags[@]}" --script-dir="$tmp/code" \
  --command="pip install -q -e . 'jax[tpu]' && exec launch/worker.sh $(printf '%q ' "$@")"
