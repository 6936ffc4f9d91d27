#!/usr/bin/env bash
# One H100, random full-size weights, at the ML.ENERGY leaderboard v3 settings (issue 16): SANA
# 1.5 4.8B and 1.6B (20 steps, 1024x1024, bf16) and FLUX.1-dev at v3's 50 steps, batch 1, the
# leaderboard's prompt sampling.
#   bash scripts/gpu/h100_leaderboard_v3.sh
cd "$(dirname "$0")/../.."
PACK_NAME=leaderboard-v3
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=name,power.limit,driver_version,memory.total --format=csv
v3() {  # v3 NAME MODEL ARGS...
  local name=$1 model=$2; shift 2
  bench "$name" 1 workload:text-to-image --workload.model_id "$model" \
    --workload.weights random --workload.prompt_sampling leaderboard \
    --workload.base_dir "$WORK/t2i/$model" --no_save_images "$@"
}
v3 sana15-4.8b Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers
v3 sana15-1.6b Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers
v3 flux-dev-50-steps black-forest-labs/FLUX.1-dev --workload.inference_steps 50
