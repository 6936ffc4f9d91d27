#!/usr/bin/env bash
# Issue 24 on one H200, second round, everything through the benchmark CLI; one
# TORCHINDUCTOR_CACHE_DIR per machine (the two stages can share a warm machine).
#   bash scripts/gpu/issue24_levers.sh levers [DEADLINE_S]   FLUX.1-dev 1024x1024 28 steps, blocks:
#       bf16p     bf16 with --profile_steps 3 (where the compiled step's time goes), images kept
#       fuse      --fuse_qkv, against bf16p (PSNR / SSIM), profiled
#       fp8fa3p   FP8 denoiser + fa3, profiled (where the FP8 step's time goes)
#       graphs    --compile_mode reduce-overhead (CUDA graphs of each compiled block), at most
#                 GRAPH_S seconds, with inductor's cudagraphs and recompiles logs and a py-spy
#                 dump of the main thread before it is stopped
#       graphsfw  the same for --compile_scope transformer (one graph for the whole forward)
#   bash scripts/gpu/issue24_levers.sh families [DEADLINE_S]  FP8 against bf16 per family:
#       PixArt-Sigma, SANA 1.5 1.6B, SD 3.5 Large (compiled whole: no repeated blocks named),
#       CogVideoX 1.5 5B (short clip, PSNR over the decoded frames), then --compile_autotune
#       cold and warm on Wan 1.3B FP8 (are the tuned configurations reused from the cache?)
#   bash scripts/gpu/issue24_levers.sh graphs2 [DEADLINE_S]  CUDA graphs with FP8 + fa3 (blocks, then
#       the whole transformer) and bf16 + fa3 (whole transformer), images not kept
#   bash scripts/gpu/issue24_levers.sh refit [DEADLINE_S]  SANA and Wan FP8 against bf16 again after
#       the activation-scale floor (both decoded NaN before it), then Wan FP8 --compile_autotune
#       cold and warm
#   bash scripts/gpu/issue24_levers.sh wan [DEADLINE_S]  FLUX eager (the issue's first row), then
#       refit without SANA (its Wan half)
#   bash scripts/gpu/issue24_levers.sh wanwarm [DEADLINE_S]  wan's warm tuning run and FLUX eager,
#       on the machine (and kernel cache) that ran wan
#   bash scripts/gpu/issue24_levers.sh families3 [DEADLINE_S]  SD 3.5 Large and CogVideoX 1.5,
#       FP8 against bf16, with the time their whole-transformer compiles take
#   bash scripts/gpu/issue24_levers.sh best [DEADLINE_S]  FLUX FP8 + fa3, whole transformer, CUDA graphs
#       and --compile_autotune (every lever together), cold then warm (is the tuning reused?),
#       then the harness overhead (scripts/harness_overhead.py, eager, bare diffusers call)
#   bash scripts/gpu/issue24_levers.sh families2 [DEADLINE_S]  the remaining bf16 families:
#       HunyuanVideo (short clip, 10 steps) and PixArt-alpha, FP8 against bf16
#       (HunyuanDiT, SDXL and Latte run in float16, where the FP8 option is refused)
# Stages that keep videos (refit, wan, families3, families2) need imageio-ffmpeg on the GPU host,
# which the GPU image lacks (the benchmark refuses such a run in one line before loading): add its
# wheel to the wheelhouse (`pip download imageio-ffmpeg`, 29 MB) and leave fa3-fwd (28 MB) out of
# that call (a `.whl-video` folder beside `.whl`, both in .git/info/exclude, `carry` naming it). Random full-size weights, batch 1. Writes one line per run into $OUT/issue24-STAGE.txt and
# packs logs, results and profile tables (no images) into $OUT/issue24-STAGE.tgz after each run.
set -uo pipefail
STAGE=${1:?usage: issue24_levers.sh levers|families|graphs2|refit|wan|wanwarm|families3|best|families2 [DEADLINE_S]}
DEADLINE=${2:-540}
GRAPH_S=${GRAPH_S:-120}
W=/tmp/issue24b; mkdir -p "$W/logs" "$W/runs"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/issue24-inductor \
  MLENERGY_COLLECTIVE_TIMEOUT_S=600
pack() {  # the lines first, then the archive through a temporary name: a call's limit may cut it
  python3 scripts/gpu/issue24_lines.py "$W/runs" > "$OUT/issue24-$STAGE.txt" 2>&1
  (cd "$W" && find logs runs \( -name '*.json' -o -name '*.log' -o -name '*.txt' \) \
      -not -name 'requests.json' -print0 | tar --null -czf "$OUT/.issue24-$STAGE.tgz" -T -) &&
    mv "$OUT/.issue24-$STAGE.tgz" "$OUT/issue24-$STAGE.tgz"
}
trap pack EXIT
COMPILED=(--use_torch_compile --compile_scope blocks --warmup_iters 2)
WHOLE=(--use_torch_compile --warmup_iters 2)
FLUX=(workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev
      --workload.weights random --benchmark_iters 4)
SHOW="time / (image|video)  |energy / (image|video)|peak memory|compile  |vs reference|Profile of|Attention:|Denoiser in FP8|error|Error"
run() {  # run NAME NEED_S ARGS...: skipped when fewer than NEED_S seconds are left
  local name=$1 need=$2; shift 2
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt "$need" ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 0; fi
  echo "=== $name start ${SECONDS} s: benchmark.py $*"
  timeout -k 10 "$left" python3 mlenergy/diffusion/benchmark.py "$@" \
    --workload.base_dir "$W/runs/$name" 2>&1 | tee "$W/logs/$name.log" | grep -E "$SHOW"
  echo "=== $name rc=${PIPESTATUS[0]} end ${SECONDS} s"
  pack
}
diagnose() {  # diagnose NAME ARGS...: at most GRAPH_S s, then py-spy dumps the main thread
  local name=$1; shift
  local left=$(( DEADLINE - SECONDS - 15 ))
  [ "$left" -gt "$GRAPH_S" ] && left=$GRAPH_S
  if [ "$left" -lt 60 ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 0; fi
  echo "=== $name start ${SECONDS} s (at most $left s): benchmark.py $*"
  TORCH_LOGS="recompiles,cudagraphs,graph_breaks" python3 mlenergy/diffusion/benchmark.py "$@" \
    --workload.base_dir "$W/runs/$name" > "$W/logs/$name.log" 2>&1 &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$left" ]; do sleep 5; waited=$((waited + 5)); done
  if kill -0 "$pid" 2>/dev/null; then
    echo "--- $name still running after $waited s: stack of the main thread" | tee -a "$W/logs/$name.log"
    /tmp/site/bin/py-spy dump --pid "$pid" > "$W/logs/$name-stack.txt" 2>&1
    head -60 "$W/logs/$name-stack.txt"
    kill -INT "$pid"; sleep 5; kill -9 "$pid" 2>/dev/null
  fi
  wait "$pid"; echo "=== $name rc=$? end ${SECONDS} s"
  grep -E "$SHOW|cudagraph|Recompil|skipping" "$W/logs/$name.log" | sort | uniq -c | sort -rn | head -25
  pack
}
dir_of() { ls -d "$W"/runs/"$1"/*/ 2>/dev/null | head -1; }
pair() {  # pair NAME NEED_S ARGS...: bf16 (images or videos kept), then FP8 against it
  local name=$1 need=$2; shift 2
  run "$name" "$need" "$@"
  local ref; ref=$(dir_of "$name")
  run "${name}fp8" "$need" --quantize_denoiser fp8 "$@" ${ref:+--reference_run "$ref"}
}
WAN=(workload:text-to-video --workload.model_id Wan-AI/Wan2.1-T2V-1.3B-Diffusers
     --workload.weights random --workload.height 480 --workload.width 832
     --workload.num_frames 33 --workload.inference_steps 10 --benchmark_iters 2
     --no_save_images)
IMG=(workload:text-to-image --workload.weights random --benchmark_iters 3)
nvidia-smi --query-gpu=index,name,power.limit,driver_version --format=csv
case "$STAGE" in
  levers)
    run bf16p 90 "${COMPILED[@]}" "${FLUX[@]}" --profile_steps 3
    ref=$(dir_of bf16p)
    run fuse 80 --fuse_qkv "${COMPILED[@]}" "${FLUX[@]}" --profile_steps 3 \
      ${ref:+--reference_run "$ref"}
    run fp8fa3p 90 --quantize_denoiser fp8 --attention_backend fa3 "${COMPILED[@]}" "${FLUX[@]}" \
      --profile_steps 3 --no_save_images
    diagnose graphs --compile_mode reduce-overhead "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
    diagnose graphsfw --compile_mode reduce-overhead "${WHOLE[@]}" "${FLUX[@]}" --no_save_images
    ;;
  families)
    pair pixart 70 "${WHOLE[@]}" "${IMG[@]}" --workload.model_id PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
    pair sana 70 "${WHOLE[@]}" "${IMG[@]}" --workload.model_id Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers
    pair sd35l 110 "${WHOLE[@]}" "${IMG[@]}" --workload.model_id stabilityai/stable-diffusion-3.5-large
    # Videos kept: --reference_run compares the decoded frames (H.264 loss included).
    pair cogvideo 90 "${WHOLE[@]}" workload:text-to-video --workload.weights random \
      --benchmark_iters 2 --workload.model_id zai-org/CogVideoX1.5-5B --workload.num_frames 17 \
      --workload.inference_steps 10 --workload.height 480 --workload.width 720
    run wantune 150 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    run wantunewarm 60 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    ;;
  graphs2)
    # The FP8 step's profile (levers) shows 12.6 ms idle per step: launch-bound, what CUDA graphs remove.
    run fp8g 80 --quantize_denoiser fp8 --attention_backend fa3 --compile_mode reduce-overhead \
      "${COMPILED[@]}" "${FLUX[@]}" --no_save_images
    run fp8gfw 150 --quantize_denoiser fp8 --attention_backend fa3 --compile_mode reduce-overhead \
      "${WHOLE[@]}" "${FLUX[@]}" --no_save_images
    run bf16fa3gfw 140 --attention_backend fa3 --compile_mode reduce-overhead \
      "${WHOLE[@]}" "${FLUX[@]}" --no_save_images
    run wantune 150 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    run wantunewarm 60 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    ;;
  refit)
    # After the FP8 activation-scale floor (2026-12-05): the two families that decoded NaN, now
    # with videos / images kept for PSNR, then the Wan cache check the families call never reached.
    pair sana 70 "${WHOLE[@]}" "${IMG[@]}" --workload.model_id Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers
    pair wan 70 "${COMPILED[@]}" "${WAN[@]:0:${#WAN[@]}-1}"
    run wantune 150 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    run wantunewarm 60 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    ;;
  wan)  # the eager FLUX row of the issue's table, refit's Wan half, then the warm tuning check
    # (the warm run needs about 120 s on an H100 before the pickling fix: wanwarm finishes it)
    run eager 60 "${FLUX[@]}" --no_save_images
    pair wan 70 "${COMPILED[@]}" "${WAN[@]:0:${#WAN[@]}-1}"
    run wantune 150 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    run wantunewarm 60 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    ;;
  wanwarm)  # wan's warm tuning run, then FLUX eager, on the machine (and kernel cache) that ran wan
    run wantunewarm 60 --quantize_denoiser fp8 --compile_autotune "${COMPILED[@]}" "${WAN[@]}"
    run eager 60 "${FLUX[@]}" --no_save_images
    ;;
  families3)
    pair sd35l 250 "${WHOLE[@]}" "${IMG[@]}" --workload.model_id stabilityai/stable-diffusion-3.5-large
    pair cogvideo 120 "${WHOLE[@]}" workload:text-to-video --workload.weights random \
      --benchmark_iters 2 --workload.model_id zai-org/CogVideoX1.5-5B --workload.num_frames 17 \
      --workload.inference_steps 10 --workload.height 480 --workload.width 720
    ;;
  best)
    BEST=(--quantize_denoiser fp8 --attention_backend fa3 --compile_mode reduce-overhead
          --compile_autotune "${WHOLE[@]}" "${FLUX[@]}" --no_save_images)
    run bestcold 330 "${BEST[@]}"
    run bestwarm 90 "${BEST[@]}"
    left=$(( DEADLINE - SECONDS ))
    if [ "$left" -ge 110 ]; then
      echo "=== overhead start ${SECONDS} s"
      timeout -k 10 "$left" torchrun --nproc_per_node=1 scripts/harness_overhead.py --iters 5 \
        --out "$OUT/harness_overhead.json" > "$W/logs/overhead.log" 2>&1
      echo "=== overhead rc=$? end ${SECONDS} s"
      grep -E '"ratio|median' "$OUT/harness_overhead.json" || tail -20 "$W/logs/overhead.log"
      pack
    else echo "--- overhead skipped at ${SECONDS} s (deadline)"; fi
    ;;
  families2)
    pair hunyuanvideo 150 "${WHOLE[@]}" workload:text-to-video --workload.weights random \
      --benchmark_iters 2 --workload.model_id tencent/HunyuanVideo --workload.num_frames 17 \
      --workload.inference_steps 10 --workload.height 480 --workload.width 848
    pair pixartalpha 70 "${WHOLE[@]}" "${IMG[@]}" --workload.model_id PixArt-alpha/PixArt-XL-2-1024-MS
    ;;
esac
echo "done at ${SECONDS} s"
