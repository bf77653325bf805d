#!/usr/bin/env bash
# One prepared check of batchscale on a GPU machine (<= 8 minutes on one H100/H200), run from the
# source tree on the machine's own PyTorch:
#
#   mkdir -p gpu_data && cp /path/to/cifar10-jpeg.tar.gz gpu_data/    # git-ignored
#   bash scripts/gpu_check.sh             # suite on CUDA, img/s, BN, packing, Table III rows
#   bash scripts/gpu_check.sh --cpu-smoke # the same script end to end on the CPU, tiny (< 3 min)
#
# Prints one table and writes docs/results/gpu/<card>-<date>.json (smoke: a temporary file).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
PY=${PYTHON:-python}
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1

if [[ $SMOKE == 1 ]]; then
    OUT=$(mktemp -d)/gpu-check-smoke.json
    SUITE="not run (cpu smoke)"
    exec $PY scripts/gpu_bench.py --cpu-smoke --json "$OUT" --suite "$SUITE"
fi

TARBALL=gpu_data/cifar10-jpeg.tar.gz
DATA=gpu_data/cifar10
if [[ ! -d $DATA/train ]]; then
    [[ -f $TARBALL ]] || { echo "gpu_check: $TARBALL not found (copy the data tarball there)" >&2; exit 2; }
    mkdir -p "$DATA" && tar xzf "$TARBALL" -C "$DATA"   # train/<class>/*.jpg, test/<class>/*.jpg
fi

CARD=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no-gpu')" \
       | tr ' A-Z' '-a-z' | tr -cd 'a-z0-9-')
mkdir -p docs/results/gpu
OUT=docs/results/gpu/$CARD-$(date +%Y-%m-%d).json

# the suite on CUDA (device auto -> cuda), at most 120 s; its summary line is kept
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
SUITE=$(timeout 120 $PY -m pytest -q -p no:cacheprovider $XDIST tests 2>&1 | tail -n 1 || true)
[[ $SUITE == *passed* || $SUITE == *failed* ]] || SUITE="timed out after 120 s: $SUITE"
echo "suite: $SUITE"

$PY scripts/gpu_bench.py --dataset "$DATA" --json "$OUT" --suite "$SUITE" \
    --budget-s 330 --table-budget-s 120 --cores "$(nproc)"
