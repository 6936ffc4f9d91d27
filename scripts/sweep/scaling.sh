#!/usr/bin/env bash
# How one model scales with GPUs: batch 1 and 4, Ulysses and ring on 1, 2, 4 and 8 GPUs, eager
# and compiled, then the report.
#   bash scripts/sweep/scaling.sh [MODEL_ID] [OUT_DIR] [BENCHMARK FLAGS...]
set -uo pipefail
cd "$(dirname "$0")/../.."
model=${1:-black-forest-labs/FLUX.1-dev}; out=${2:-run}; shift 2 || shift $#
python3 -m mlenergy.diffusion.sweep --models "$model" --batch_sizes 1 4 \
  --parallel 1x1 2x1 1x2 4x1 2x2 8x1 4x2 --options= \
  "--options=--use_torch_compile --warmup_iters 2" --out_dir "$out" \
  --timeout_s "${SWEEP_TIMEOUT_S:-3600}" -- "$@"
status=$?
python3 -m mlenergy.diffusion.tools.report "$out"
exit $status
