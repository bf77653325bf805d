#!/bin/sh
# The advise probes behind docs/results/advise-mini/report.md (run from the repository root, one
# after another, beside other work on the shared 2-core machine), at the default budget.
# Each recipe's config is a sweep run's own config.yaml; advise sets the batch itself.
MINI=docs/results/mini/linear+warmup/b64/seed0/config.yaml
PWBN=docs/results/beyond-mini/per-worker-bn/b128/seed0/config.yaml
OUT=docs/results/advise-mini
PY=${PYTHON:-python}
# mini's linear+warmup recipe (also diverge-mini's linear+warmup): base lr 0.01 at B = 4
nice -n 10 $PY -m batchscale advise --config $MINI --batches 4,16,64,256 \
  --out $OUT/linear+warmup --overwrite > $OUT/linear+warmup.log 2>&1
# diverge-mini's linear-x4: the same recipe at base lr 0.04 (a full run: 120 epochs)
nice -n 10 $PY -m batchscale advise --config $MINI --lr 0.04 --batches 4,16,64,256 \
  --out $OUT/linear-x4 --overwrite > $OUT/linear-x4.log 2>&1
# the Table III recipe (per-worker BN over 4) of mini and beyond-mini
nice -n 10 $PY -m batchscale advise --config $PWBN --batches 4,16,32,64,128 \
  --out $OUT/per-worker-bn --overwrite > $OUT/per-worker-bn.log 2>&1
