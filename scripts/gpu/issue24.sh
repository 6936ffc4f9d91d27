#!/usr/bin/env bash
# Issue 24 on one H200, everything through the benchmark CLI, one TORCHINDUCTOR_CACHE_DIR per call
# (fresh on a fresh machine, so the first compiled run of a call compiles cold).
#   bash scripts/gpu/issue24.sh flux [DEADLINE_S]  FLUX.1-dev 1024x1024 28 steps, compiled by blocks:
#       fp8       --quantize_denoiser fp8 (no coordinate descent now): the call's first compile (cold)
#       fp8warm   the same again: warm kernel cache
#       bf16      bf16 (default attention), images kept: the reference for PSNR / SSIM
#       fa3       --attention_backend fa3 (FlashAttention-3 from the fa3-fwd wheel), vs bf16
#       fp8fa3    FP8 and fa3 together
#       fp8tune   FP8 + --compile_autotune (coordinate descent back on), cold for its kernels
#   bash scripts/gpu/issue24.sh graphs [DEADLINE_S]  FLUX.1-dev as above, bf16, CUDA graphs:
#       bf16g     blocks, default mode (this call's reference)
#       graphs    blocks + --compile_mode reduce-overhead (CUDA graphs of each compiled block)
#       graphsfa3 the same with --attention_backend fa3
#       graphsfw  --compile_scope transformer + reduce-overhead (one graph for the whole forward)
#   bash scripts/gpu/issue24.sh wan [DEADLINE_S]   Wan2.1-1.3B 480x832, 33 frames, 10 steps, blocks:
#       wanbf16, wanfp8 (--reference_run compares images only), then fp8tune as above
# Random full-size weights, batch 1. Packs logs and results (no images) into $OUT/issue24-STAGE.tgz
# and one line per run into $OUT/issue24-STAGE.txt.
set -uo pipefail
STAGE=${1:?usage: issue24.sh flux|wan [DEADLINE_S]}
DEADLINE=${2:-560}
W=/tmp/issue24; mkdir -p "$W/logs" "$W/runs"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor \
  MLENERGY_COLLECTIVE_TIMEOUT_S=600
pack() {
  (cd "$W" && find logs runs \( -name '*.json' -o -name '*.log' \) -print0 \
    | tar --null -czf "$OUT/issue24-$STAGE.tgz" -T -)
  python3 scripts/gpu/issue24_lines.py "$W/runs" > "$OUT/issue24-$STAGE.txt" 2>&1
}
trap pack EXIT
COMPILED=(--use_torch_compile --compile_scope blocks --warmup_iters 2)
FLUX=(workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev
      --workload.weights random --benchmark_iters 4)
WAN=(workload:text-to-video --workload.model_id Wan-AI/Wan2.1-T2V-1.3B-Diffusers
     --workload.weights random --workload.height 480 --workload.width 832
     --workload.num_frames 33 --workload.inference_steps 10 --benchmark_iters 2
     --no_save_images)
run() {  # run NAME NEED_S ARGS...: skipped when fewer than NEED_S seconds are left
  local name=$1 need=$2; shift 2
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt "$need" ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 0; fi
  echo "=== $name start ${SECONDS} s: benchmark.py $*"
  timeout "$left" python3 mlenergy/diffusion/benchmark.py "$@" --workload.base_dir "$W/runs/$name" \
    2>&1 | tee "$W/logs/$name.log" | grep -E "time / (image|video)  |energy / (image|video)|peak memory|compile  |vs reference|Attention:|FlashAttention-3|Denoiser in FP8|error"
  echo "=== $name rc=${PIPESTATUS[0]} end ${SECONDS} s"
}
dir_of() { ls -d "$W"/runs/"$1"/*/ 2>/dev/null | head -1; }
compare() {  # compare RUN REFERENCE: PSNR / SSIM after the fact, written into RUN's results.json
  local a b; a=$(dir_of "$1"); b=$(dir_of "$2")
  [ -n "$a" ] && [ -n "$b" ] && timeout 120 python3 -m mlenergy.diffusion.results.quality "$a" "$b" --write
}
nvidia-smi --query-gpu=index,name,power.limit,driver_version --format=csv
python3 -c "import torch, torchao, fa3_fwd_interface; print(torch.__version__, torchao.__version__)"
case "$STAGE" in
  flux)
    run fp8 150 --quantize_denoiser fp8 "${COMPILED[@]}" "${FLUX[@]}"
    run fp8warm 80 --quantize_denoiser fp8 "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
    run bf16 90 "${COMPILED[@]}" "${FLUX[@]}"
    compare fp8 bf16
    ref=$(dir_of bf16)
    run fa3 80 --attention_backend fa3 "${COMPILED[@]}" "${FLUX[@]}" ${ref:+--reference_run "$ref"}
    run fp8fa3 80 --quantize_denoiser fp8 --attention_backend fa3 "${COMPILED[@]}" "${FLUX[@]}" \
      ${ref:+--reference_run "$ref"}
    run fp8tune 150 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${FLUX[@]}" \
      --no_save_images
    ;;
  graphs)
    run bf16g 100 "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
    run graphs 100 --compile_mode reduce-overhead "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
    run graphsfa3 90 --compile_mode reduce-overhead --attention_backend fa3 "${COMPILED[@]}" \
      "${FLUX[@]}" --no_save_images
    run graphsfw 120 --use_torch_compile --compile_scope transformer --warmup_iters 2 \
      --compile_mode reduce-overhead "${FLUX[@]}" --no_save_images
    ;;
  wan)
    run wanbf16 150 "${COMPILED[@]}" "${WAN[@]}"
    run wanfp8 150 --quantize_denoiser fp8 "${COMPILED[@]}" "${WAN[@]}"
    # What is left of the call: FP8 with coordinate descent (its first call ran past 150 s in
    # the flux call).
    run fp8tune 200 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${FLUX[@]}" \
      --no_save_images
    ;;
esac
echo "done at ${SECONDS} s"
