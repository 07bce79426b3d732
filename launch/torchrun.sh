#!/usr/bin/env bash
# Launch `tdsdist score` (or `generate`) under torchrun on this node. Every knob is an environment
# variable with a default; all arguments go to `python -m tdsdist.$JOB` (e.g. --config
# configs/llama2-70b.yaml).
#
#   NPROC=8 launch/torchrun.sh --config configs/llama2-70b.yaml --tp 8          # one node
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=head:29500 launch/torchrun.sh ...        # each of 2 nodes
#   JOB=generate NPROC=8 launch/torchrun.sh --aligned M --data P --out A.json --tp 2
set -euo pipefail

NPROC=${NPROC:-8}                   # processes (GPUs) on this node
NNODES=${NNODES:-1}                 # nodes in the job
RDZV_ENDPOINT=${RDZV_ENDPOINT:-}    # host:port of the rendezvous (multi-node); empty: standalone
RDZV_ID=${RDZV_ID:-tdsdist}         # the same on every node of one job
MAX_RESTARTS=${MAX_RESTARTS:-0}     # a failed rank ends the job; re-running resumes it
PYTHON=${PYTHON:-python}
JOB=${JOB:-score}                   # score | generate | nudge
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [[ -z "$RDZV_ENDPOINT" ]]; then
  if [[ "$NNODES" != 1 ]]; then
    echo "launch/torchrun.sh: NNODES=$NNODES needs RDZV_ENDPOINT=host:port" >&2
    exit 2
  fi
  rdzv=(--standalone)
else
  rdzv=(--rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "$RDZV_ID")
fi

exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc_per_node "$NPROC" --max_restarts "$MAX_RESTARTS" "${rdzv[@]}" \
  -m "tdsdist.$JOB" "$@"
