#!/bin/sh
# Two "nodes" on one machine (docs/distributed.md): torchrun with a c10d rendezvous on 127.0.0.1,
# one worker and one thread each, the embedded sample, width 16, B = 128 (64 per worker), 8
# epochs; then the one-process simulation of the same run (per-worker BN over groups of 64).
# Run from the repository root with the venv active: sh docs/results/two-nodes/run.sh
# It writes two-nodes/ and one-process/ here (about 3 minutes on 2 idle cores).
set -e
HERE=docs/results/two-nodes
ARGS="--dataset sample --width 16 --epochs 8 --batch-size 128 --lr 0.1 --base-batch-size 128 \
  --warmup-epochs 1 --schedule cosine --threads 1 --quiet"
rm -rf "$HERE/two-nodes" "$HERE/one-process"
for NODE in 0 1; do
  # shellcheck disable=SC2086
  torchrun --nnodes 2 --nproc-per-node 1 --node-rank $NODE --rdzv-backend c10d \
    --rdzv-endpoint 127.0.0.1:29400 --rdzv-id two-nodes \
    -m batchscale train $ARGS --out "$HERE/two-nodes" &
done
wait
# shellcheck disable=SC2086
python -m batchscale train $ARGS --bn-group 64 --out "$HERE/one-process"
