#!/usr/bin/env bash
# FLUX.1-dev (random full-size weights), batch 1, 1024x1024, 28 steps on 1, 2 and 4 GPUs of one
# host, with Ulysses, ring and both; eager, or compiled through xDiT.
#   bash scripts/gpu/h100_scaling.sh eager|compile|cudagraphs
# (cudagraphs: 1 GPU compiled, and Ulysses 2 compiled with and without CUDA graphs, on 2 GPUs)
cd "$(dirname "$0")/../.."
PACK_NAME=scaling-$1
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=index,name,power.limit --format=csv
nvidia-smi topo -m | head -6
base="$WORK/t2i/black-forest-labs/FLUX.1-dev"
flux=(workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev
      --workload.weights random --workload.base_dir "$base" --no_save_images)
case "$1" in
  eager) extra=(--benchmark_iters 3); configs="1,1 2,1 1,2 4,1 1,4 2,2" ;;
  compile) extra=(--use_torch_compile --warmup_iters 2 --benchmark_iters 3); configs="1,1 2,1 4,1" ;;
  cudagraphs) extra=(--use_torch_compile --warmup_iters 2 --benchmark_iters 2 --idle_baseline_s 0)
    configs="1,1 2,1"
    CUDA_VISIBLE_DEVICES=0,1 bench "flux-u2-r1-cudagraphs" 2 --ulysses_degree 2 "${flux[@]}" \
      "${extra[@]}" --compile_mode reduce-overhead ;;
esac
for c in $configs; do
  u=${c%,*} r=${c#*,} n=$(( ${c%,*} * ${c#*,} ))
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) bench "flux-u$u-r$r-$1" "$n" \
    --ulysses_degree "$u" --ring_degree "$r" "${flux[@]}" "${extra[@]}"
done
