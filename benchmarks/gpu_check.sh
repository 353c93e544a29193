#!/usr/bin/env bash
# The GPU check (a few minutes on one GPU): the CUDA tests, one PTB epoch in bf16, IW-NLL K = 500 on 500
# PTB test sentences batched against a batch-1 loop, and a 1-GPU torchrun run. Prints a table and writes
# benchmarks/results/gpu_check.json. Usage: bash benchmarks/gpu_check.sh [PTB_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/ptb}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
python -m pytest -q tests/test_precision.py -k cuda -p no:cacheprovider | tail -3 | tee /tmp/textvae-gpu-tests.txt
exec python benchmarks/gpu_check.py --data "$data" --tests "$(tail -1 /tmp/textvae-gpu-tests.txt)"
