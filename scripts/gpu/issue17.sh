#!/usr/bin/env bash
# Issue 17 on one 4x H100 host, in one device call: FLUX.1-dev (random full-size weights),
# 1024x1024, 28 steps, batch 1, compiled by blocks. Runs on disjoint GPUs go in parallel:
#   GPU 0: 1 GPU bf16 (+ profile of 4 steps), then the dynamo probe of unfixed compiled ring
#          on GPUs 0,1 (tiny weights)
#   GPU 1: 1 GPU FP8 + fused QKV
#   GPUs 2,3: ring 2 (ring attention kept eager, the first fix), then Ulysses 2 (+ profile)
# then on all four: Ulysses 2 x ring 2, then Ulysses 4; last, PSNR of FP8 against bf16.
# A 4-GPU run starts only with 150 s left before the deadline (else skipped: device time).
# Usage (repo root holding mlenergy/ and scripts/): bash scripts/gpu/issue17.sh [DEADLINE_S]
set -u
DEADLINE=${1:-540}
W=/tmp/issue17; mkdir -p "$W/logs" "$W/extra" "$W/runs"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor \
  MLENERGY_EXTRA_OUT=$W/extra NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1 MLENERGY_COLLECTIVE_TIMEOUT_S=300
pack() {
  (cd "$W" && find logs extra runs \( -name '*.json' -o -name '*.txt' -o -name '*.log' \) -print0 \
    | tar --null -czf "$OUT/issue17.tgz" -T -)
}
trap pack EXIT
FLUX=(workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev
      --workload.weights random)
COMPILED=(--use_torch_compile --compile_scope blocks --warmup_iters 2 --benchmark_iters 3)
# run NAME GPUS NPROC "ENV=1 ..." ARGS...
run() {
  local name=$1 gpus=$2 n=$3 envs=$4; shift 4
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt "${NEED:-45}" ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 0; fi
  [ -n "${CAP:-}" ] && [ "$left" -gt "$CAP" ] && left=$CAP
  echo "=== $name start ${SECONDS} s GPUs $gpus: $envs torchrun --nproc_per_node=$n ... $*"
  env $envs CUDA_VISIBLE_DEVICES="$gpus" MLENERGY_TAG="$name" timeout "$left" \
    torchrun --standalone --nproc_per_node="$n" scripts/gpu/issue17_run.py "$@" \
    --workload.base_dir "$W/runs/$name" > "$W/logs/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc end ${SECONDS} s"
  grep -E "time / image  |energy / image|average power|peak memory|compile  |step latency|Denoiser in FP8" \
    "$W/logs/$name.log" | head -12
  [ $rc -eq 0 ] || tail -6 "$W/logs/$name.log"
}
nvidia-smi --query-gpu=index,name,power.limit,memory.used --format=csv
python3 -c "import torch, packaging; print('torch', torch.__version__, 'packaging', packaging.__version__)"
{
  run r2 2,3 2 "MLENERGY_PROFILE_STEPS=4 MLENERGY_EAGER_RING=1" --ring_degree 2 "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
  run u2 2,3 2 "MLENERGY_PROFILE_STEPS=4" --ulysses_degree 2 "${COMPILED[@]}" "${FLUX[@]}" \
    --no_save_images
} > "$W/logs/group-a.txt" 2>&1 &
A=$!
{
  run bf16 0 1 "MLENERGY_PROFILE_STEPS=4" "${COMPILED[@]}" "${FLUX[@]}"
  CAP=150 run probe 0,1 2 "MLENERGY_UNFIXED_RING=1" --ring_degree 2 \
    --use_torch_compile --compile_scope blocks --warmup_iters 2 --benchmark_iters 1 \
    workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev \
    --workload.weights tiny --workload.height 256 --workload.width 256 \
    --workload.inference_steps 2 --no_save_images
} > "$W/logs/group-b.txt" 2>&1 &
B=$!
run fp8 1 1 "MLENERGY_FUSE_QKV=1 MLENERGY_FP8_DENOISER=1" "${COMPILED[@]}" "${FLUX[@]}" \
  > "$W/logs/group-c.txt" 2>&1 &
C=$!
wait $A $B $C
cat "$W/logs/group-a.txt" "$W/logs/group-b.txt" "$W/logs/group-c.txt"
NEED=150 run u2r2 0,1,2,3 4 "MLENERGY_PROFILE_STEPS=4 MLENERGY_EAGER_RING=1" --ulysses_degree 2 --ring_degree 2 "${COMPILED[@]}" "${FLUX[@]}" \
  --no_save_images
NEED=150 run u4 0,1,2,3 4 "MLENERGY_PROFILE_STEPS=4" --ulysses_degree 4 "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
fp8_dir=$(ls -d "$W"/runs/fp8/*/ 2>/dev/null | head -1)
bf16_dir=$(ls -d "$W"/runs/bf16/*/ 2>/dev/null | head -1)
[ -n "$fp8_dir" ] && [ -n "$bf16_dir" ] && python3 -m mlenergy.diffusion.results.quality "$fp8_dir" "$bf16_dir" --write
grep -h -A16 "^from user code" "$W/logs/probe.log" 2>/dev/null | head -17
echo "done at ${SECONDS} s"
