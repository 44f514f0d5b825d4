#!/usr/bin/env bash
# One host's process of a multi-host training run: joins the job and runs depthvlm-train.
#
# Every launcher here runs this script with the same training arguments on every host
# (tpu_pod.sh over gcloud ssh, slurm.sbatch through srun, xpk.sh in each pod), so a run starts
# the same way everywhere, and tests/test_launch.py runs this very path in 2 processes.
usage() {
  cat <<'EOF'
Usage: launch/worker.sh [--coordinator=HOST:PORT --num-processes=N --process-id=I] TRAIN_ARGS...

Runs `depthvlm-train TRAIN_ARGS --config.distributed.enabled=True ...` on this host.
  --coordinator=HOST:PORT  process 0's host and a free port, the same on every host
  --num-processes=N        processes in the job (one per host, or per GPU)
  --process-id=I           this process, 0 to N-1 (0 writes logs, pictures and results)
Give all three (SLURM, clusters wired by hand) or none: JAX then detects them (Cloud TPU VM
pods, GKE TPU slices; see jax.distributed.initialize).
EOF
}
set -euo pipefail

coordinator="" num_processes="" process_id=""
while (($#)); do
  case $1 in
    --coordinator=*) coordinator=${1#*=} ;;
    --num-processes=*) num_processes=${1#*=} ;;
    --process-id=*) process_id=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) break ;;  # the first argument that is not ours starts depthvlm-train's
  esac
  shift
done

fail() { echo "worker.sh: error: $*" >&2; exit 2; }
(($#)) || { usage >&2; exit 2; }

# The launcher's settings go last, so they win over any --config.distributed.* in TRAIN_ARGS.
distributed=(--config.distributed.enabled=True)
if [[ -n $coordinator$num_processes$process_id ]]; then
  [[ $coordinator =~ ^.+:[0-9]+$ ]] || fail "give --coordinator=HOST:PORT (got '$coordinator')"
  [[ $num_processes =~ ^[1-9][0-9]*$ ]] || fail "give --num-processes=N, N >= 1 (got '$num_processes')"
  if ! [[ $process_id =~ ^(0|[1-9][0-9]*)$ ]] || ((process_id >= num_processes)); then
    fail "give --process-id=I, 0 <= I < $num_processes (got '$process_id')"
  fi
  distributed+=("--config.distributed.coordinator_address=$coordinator"
                "--config.distributed.num_processes=$num_processes"
                "--config.distributed.process_id=$process_id")
  echo "worker.sh on $HOSTNAME: process $process_id of $num_processes, coordinator $coordinator" >&2
else
  echo "worker.sh on $HOSTNAME: JAX detects the coordinator and this process's id" >&2
fi
exec depthvlm-train "$@" "${distributed[@]}"
