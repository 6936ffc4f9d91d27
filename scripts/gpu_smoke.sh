#!/usr/bin/env bash
# Single-GPU smoke test (what a GPU CI job runs): tiny FLUX, then the full-size FLUX.1-dev
# architecture with random weights at a small size, on one GPU. Checks every output file, a
# finite positive energy per image, and the recorded GPU name and power limit.
#   bash scripts/gpu_smoke.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
bench() { timeout 900 torchrun --nproc_per_node=1 mlenergy/diffusion/benchmark.py "$@"; }
bench workload:text-to-image --workload.weights tiny --workload.base_dir "$out/tiny" \
  --workload.batch_size 4 --workload.height 512 --workload.width 512 \
  --workload.inference_steps 8 --benchmark_iters 3 --overwrite_results
bench workload:text-to-image --workload.weights random --workload.base_dir "$out/flux" \
  --workload.height 512 --workload.width 512 --workload.inference_steps 4 \
  --benchmark_iters 3 --overwrite_results
python3 -m mlenergy.diffusion.tools.check_runs "$out"/tiny/batch-* "$out"/flux/batch-*
echo "gpu smoke test passed: $out"
