#!/usr/bin/env bash
# The sweep and the report end to end on a CPU in about a minute: tiny FLUX and PixArt-Sigma,
# batch 1 and 2, one process and Ulysses 2 over gloo.
#   bash scripts/sweep/tiny_cpu.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-run/tiny}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python3 -m mlenergy.diffusion.sweep --models black-forest-labs/FLUX.1-dev \
  PixArt-alpha/PixArt-Sigma-XL-2-1024-MS --batch_sizes 1 2 --parallel 1x1 2x1 \
  --out_dir "$out" --timeout_s 300 -- --workload.weights tiny --workload.height 128 \
  --workload.width 128 --workload.inference_steps 2 --warmup_iters 1 --benchmark_iters 2
status=$?
python3 -m mlenergy.diffusion.tools.report "$out"
exit $status
