#!/usr/bin/env bash
# One H100, one device call, everything through the benchmark CLI (mlenergy/diffusion/benchmark.py):
#   flux50  FLUX.1-dev at the leaderboard's 50 steps, eager (issue 16)
#   sana48  SANA 1.5 4.8B at its defaults (issue 16)
#   bf16    FLUX.1-dev 28 steps compiled by blocks (same-call baseline, issue 17)
#   fp8     the same with --quantize_denoiser fp8, quality against bf16 (issue 17)
#   fp8warm the same again on a warm kernel cache: compile time (issue 17)
# All random full-size weights, 1024x1024, batch 1, one TORCHINDUCTOR_CACHE_DIR.
# Usage (repo root): bash scripts/gpu/final_x1.sh [DEADLINE_S]
set -u
DEADLINE=${1:-560}
W=/tmp/final; mkdir -p "$W/logs" "$W/runs"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor \
  MLENERGY_COLLECTIVE_TIMEOUT_S=600
pack() {
  (cd "$W" && find logs runs \( -name '*.json' -o -name '*.txt' -o -name '*.log' \) -print0 \
    | tar --null -czf "$OUT/final.tgz" -T -)
}
trap pack EXIT
FLUX=(workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev --workload.weights random)
COMPILED=(--use_torch_compile --compile_scope blocks --warmup_iters 2 --benchmark_iters 4)
run() {  # run NAME NEED_S ARGS...
  local name=$1 need=$2; shift 2
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt "$need" ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 0; fi
  echo "=== $name start ${SECONDS} s: benchmark.py $*"
  timeout "$left" python3 mlenergy/diffusion/benchmark.py "$@" --workload.base_dir "$W/runs/$name" \
    > "$W/logs/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc end ${SECONDS} s"
  grep -E "time / (image|video)  |energy / (image|video)|average power|peak memory|compile  |vs reference|step latency|Denoiser in FP8|MFU" \
    "$W/logs/$name.log" | head -12
  [ $rc -eq 0 ] || tail -8 "$W/logs/$name.log"
}
nvidia-smi --query-gpu=index,name,power.limit,driver_version --format=csv
run flux50 100 "${FLUX[@]}" --workload.inference_steps 50 --no_save_images
run sana48 80 workload:text-to-image --workload.model_id Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers \
  --workload.weights random --no_save_images
run bf16 90 "${COMPILED[@]}" "${FLUX[@]}"
bf16_dir=$(ls -d "$W"/runs/bf16/*/ 2>/dev/null | head -1)
run fp8 120 --quantize_denoiser fp8 "${COMPILED[@]}" ${bf16_dir:+--reference_run "$bf16_dir"} "${FLUX[@]}"
run fp8warm 90 --quantize_denoiser fp8 "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
echo "done at ${SECONDS} s"
