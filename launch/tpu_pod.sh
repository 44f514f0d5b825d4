#!/usr/bin/env bash
# Training on an existing Cloud TPU VM (a single host or a pod slice: v4-32, v5p-64, v6e-16, ...)
# over gcloud: ships this working tree to every worker, installs it, and starts the same
# command on all of them at once. Creates and deletes nothing in the cloud.
usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [-t TPU] [-z ZONE] [-p PROJECT] [-d DIR] [-s] [-b] -- TRAIN_ARGS...

  -t TPU      the TPU VM's name (default: $TPU_NAME)
  -z ZONE     its zone (default: $ZONE, else gcloud's compute/zone)
  -p PROJECT  its project (default: $PROJECT, else gcloud's core/project)
  -d DIR      the code and its venv on each worker, relative to the home directory there
              (default: depthvlm_jax)
  -s          skip shipping and installing (the workers have this code already)
  -b          start in the background and return: the run outlives this shell and each worker
              writes DIR/train.log (default: wait, with worker K's output in
              out/logs/tpu-TPU-TIME/K.log here)
  -h          this help

Ships the files git tracks plus the untracked ones it does not ignore (launch/bundle.sh),
installs them into DIR/.venv with `pip install -e . jax[tpu]`, then runs on every worker
  launch/worker.sh TRAIN_ARGS  (= depthvlm-train TRAIN_ARGS --config.distributed.enabled=True)
and JAX finds the pod's other workers itself. --workdir and the data must be paths that every
worker sees (README: "Launching on pods and clusters").
EOF
}
set -euo pipefail

tpu=${TPU_NAME:-} zone=${ZONE:-} project=${PROJECT:-} dir=depthvlm_jax ship=1 background=0
while getopts "t:z:p:d:sbh" opt; do
  case $opt in
    t) tpu=$OPTARG ;;
    z) zone=$OPTARG ;;
    p) project=$OPTARG ;;
    d) dir=$OPTARG ;;
    s) ship=0 ;;
    b) background=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ -n $tpu ]] || { echo "tpu_pod.sh: error: give the TPU VM's name (-t TPU or TPU_NAME)" >&2; exit 2; }
(($#)) || { usage >&2; exit 2; }

where=(--worker=all)  # every host of the slice, concurrently
if [[ -n $zone ]]; then where+=(--zone="$zone"); fi
if [[ -n $project ]]; then where+=(--project="$project"); fi
on_all() { gcloud compute tpus tpu-vm ssh "$tpu" "${where[@]}" "$@"; }
remote_dir=$(printf %q "$dir")

if ((ship)); then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$(dirname "$0")/bundle.sh" "$tmp/depthvlm_jax.tar.gz"
  gcloud compute tpus tpu-vm scp "$tmp/depthvlm_jax.tar.gz" "$tpu:" "${where[@]}"
  # The venv is kept between launches, so later installs only add what changed. jax[tpu] brings
  # the libtpu that matches the jax version depthvlm_jax resolves to.
  on_all --command="set -e; mkdir -p $remote_dir; tar -xzf depthvlm_jax.tar.gz -C $remote_dir
    rm depthvlm_jax.tar.gz; cd $remote_dir; test -x .venv/bin/pip || python3 -m venv .venv
    .venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e . 'jax[tpu]'"
fi

run="cd $remote_dir && . .venv/bin/activate && exec launch/worker.sh $(printf '%q ' "$@")"
if ((background)); then
  # nohup and no terminal: a dropped connection neither hangs up nor breaks the run's output.
  on_all --command="nohup bash -c $(printf %q "$run") > $remote_dir/train.log 2>&1 < /dev/null &"
  echo "tpu_pod.sh: started; follow worker 0 with: gcloud compute tpus tpu-vm ssh $tpu ${where[*]:1}" \
       "--worker=0 --command='tail -f $remote_dir/train.log'"
else
  logs="out/logs/tpu-$tpu-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$logs"
  echo "tpu_pod.sh: running; worker K writes $logs/K.log (tail -f $logs/0.log for the progress)"
  on_all --command="$run" --output-directory="$logs"
fi
