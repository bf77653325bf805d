#!/bin/sh
# The learning-rate sweep the collapse rule was chosen from (docs/collapse.md): B = 256 on the
# embedded sample, 1024 training images (4 steps an epoch), width 8, 8 epochs, constant lr after
# no warmup (the step schedule decays only at epoch 50). Peak lr = lr x 256/32.
# Run from the repository root: sh docs/results/collapse-rule/run.sh
set -e
for lr in 0.025 0.05 0.1 0.2 0.4 1.6 6.4; do
  nice -n 10 python -m batchscale train --dataset sample --width 8 --train-subset 1024 \
    --batch-size 256 --epochs 8 --lr "$lr" --quiet \
    --out "docs/results/collapse-rule/lr$lr" --overwrite
done
# the borderline rate (peak 1.6), trained 3x longer to see whether it is slow or collapsed
nice -n 10 python -m batchscale train --dataset sample --width 8 --train-subset 1024 \
  --batch-size 256 --epochs 24 --lr 0.2 --quiet --out docs/results/collapse-rule/lr0.2-24ep \
  --overwrite
