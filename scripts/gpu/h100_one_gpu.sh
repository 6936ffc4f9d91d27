#!/usr/bin/env bash
# One H100: the smoke test, the harness-overhead comparison, FLUX.1-dev at its defaults, and every
# registered text-to-image model at its defaults with random full-size weights.
#   bash scripts/gpu/h100_one_gpu.sh smoke|models [BATCH] [MEASURED_ITERS]
cd "$(dirname "$0")/../.."
PACK_NAME=one-gpu-$1
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=name,power.limit,driver_version,memory.total --format=csv
case "$1" in
  smoke)
    bash scripts/gpu_smoke.sh "$WORK/smoke" > "$WORK/logs/smoke.log" 2>&1; echo "smoke rc=$?"
    tail -4 "$WORK/logs/smoke.log"
    timeout 600 torchrun --nproc_per_node=1 scripts/harness_overhead.py --iters 5 \
      --out "$WORK/harness_overhead.json" > "$WORK/logs/overhead.log" 2>&1
    grep -E '"ratio|median' "$WORK/harness_overhead.json" || tail -20 "$WORK/logs/overhead.log"
    bench flux-bs1 1 workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev \
      --workload.weights random --workload.base_dir "$WORK/t2i/black-forest-labs/FLUX.1-dev"
    ;;
  models)
    batch=${2:-1} iters=${3:-3}
    for model in PixArt-alpha/PixArt-Sigma-XL-2-1024-MS PixArt-alpha/PixArt-XL-2-1024-MS \
        stabilityai/stable-diffusion-3-medium-diffusers stabilityai/stable-diffusion-3.5-medium \
        stabilityai/stable-diffusion-3.5-large Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers \
        stabilityai/stable-diffusion-xl-base-1.0 black-forest-labs/FLUX.1-dev; do
      bench "$(basename $model)-bs$batch" 1 workload:text-to-image --workload.model_id "$model" \
        --workload.weights random --workload.batch_size "$batch" --benchmark_iters "$iters" \
        --workload.base_dir "$WORK/t2i/$model" --no_save_images
    done
    ;;
esac
