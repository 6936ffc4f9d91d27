#!/usr/bin/env bash
# One H100, FLUX.1-dev (random full-size weights), batch 1, 1024x1024, 28 steps: what each
# performance option buys in seconds, joules and memory, and what the lossy ones cost in image
# quality against the exact baseline (--reference_run).
#   bash scripts/gpu/h100_options.sh main      # baseline, compile, fp8 T5, teacache, fbcache
#                                             # (about 5 min)
#   bash scripts/gpu/h100_options.sh combined  # fbcache, fbcache at threshold 1.0 alone and
#                                             # compiled, compile with CUDA graphs, offload
#   bash scripts/gpu/h100_options.sh offload   # sequential CPU offload alone
#   bash scripts/gpu/h100_options.sh attention # 1 GPU: attention kernels, compile scopes, and
#                                             # the best combination (about 8 min)
#   bash scripts/gpu/h100_options.sh compiled-caches  # 1 GPU: the last three rows of
#                                             # `attention` alone (about 5 min)
#   bash scripts/gpu/h100_options.sh ulysses4  # 4 GPUs, Ulysses 4: every option and the best
#                                             # combination (about 12 min)
#   bash scripts/gpu/h100_options.sh ulysses4-rest  # its step caches and attention rows alone
cd "$(dirname "$0")/../.."
PACK_NAME=options-$1
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=name,power.limit,driver_version,memory.total --format=csv
python -c "import optimum.quanto, skimage" 2>/dev/null \
  || echo "!!! optimum-quanto / scikit-image missing: pip install -e '.[fp8,quality]' (fp8 and quality fields will be refused)"
base="$WORK/t2i/black-forest-labs/FLUX.1-dev"
flux=(workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev
      --workload.weights random --workload.base_dir "$base"
      --workload.batch_size 1 --workload.height 1024 --workload.width 1024
      --workload.inference_steps 28)
uly=1; nproc=1
case "$1" in ulysses4*) uly=4; nproc=4; flux+=(--ulysses_degree 4) ;; esac
ref="$base/batch-1+size-1024x1024+steps-28+seed-48105+uly-$uly+ring-1+tc-False+weights-random"
# Compiled runs share one kernel cache, as a sweep's points do: a run that compiles graphs an
# earlier run compiled loads them (results.json compile.kernel_cache).
export TORCHINDUCTOR_CACHE_DIR="$WORK/compile_cache"
eager=(--warmup_iters 1 --benchmark_iters 2)
# Compiled runs: the first warm-up call compiles, the second must not (results.json `compile`
# says whether anything recompiled while measuring).
compiled=(--use_torch_compile --warmup_iters 2 --benchmark_iters 2)
# The exact baseline the lossy runs compare with (a fresh host needs it again).
[ "$1" = offload ] || [ -f "$ref/results.json" ] \
  || bench baseline "$nproc" "${flux[@]}" "${eager[@]}"
case "$1" in
  main)
    bench compile 1 "${flux[@]}" "${compiled[@]}" --reference_run "$ref"
    bench fp8t5 1 "${flux[@]}" "${eager[@]}" --use_fp8_t5_encoder --reference_run "$ref"
    bench teacache 1 "${flux[@]}" "${eager[@]}" --use_teacache --reference_run "$ref"
    bench fbcache 1 "${flux[@]}" "${eager[@]}" --use_fbcache --reference_run "$ref"
    ;;
  attention)
    # Which kernel runs attention (one GPU: diffusers' dispatcher picks torch's SDPA kernel).
    bench sdpa-flash 1 "${flux[@]}" "${eager[@]}" --attention_backend sdpa_flash \
      --reference_run "$ref"
    bench cudnn 1 "${flux[@]}" "${eager[@]}" --attention_backend cudnn --reference_run "$ref"
    bench compile-cudnn 1 "${flux[@]}" "${compiled[@]}" --attention_backend cudnn \
      --reference_run "$ref"
    # Regional compilation: each repeated block class compiled once.
    bench compile-blocks 1 "${flux[@]}" "${compiled[@]}" --compile_scope blocks \
      --reference_run "$ref"
    bench compile-blocks-cudnn 1 "${flux[@]}" "${compiled[@]}" --compile_scope blocks \
      --attention_backend cudnn --reference_run "$ref"
    ;;&
  attention|compiled-caches)
    # On one GPU torch's default SDPA kernel for these shapes is cuDNN's already, so the best
    # combination leaves the attention backend alone.
    bench compile-blocks-fbcache-t1 1 "${flux[@]}" "${compiled[@]}" --compile_scope blocks \
      --use_fbcache --cache_threshold 1.0 --reference_run "$ref"
    bench best 1 "${flux[@]}" "${compiled[@]}" --compile_scope blocks --use_fp8_t5_encoder \
      --use_fbcache --reference_run "$ref"
    # Inductor autotuning the blocks' matrix multiplies (compile time grows).
    bench compile-blocks-autotune 1 "${flux[@]}" "${compiled[@]}" --compile_scope blocks \
      --compile_mode max-autotune-no-cudagraphs --reference_run "$ref"
    ;;
  combined)  # the rest: on a fresh host the baseline above is made first
    bench fbcache 1 "${flux[@]}" "${eager[@]}" --use_fbcache --reference_run "$ref"
    # Random weights change a lot from step to step, so at xDiT's threshold the caches may never
    # reuse anything; a high threshold shows what skipping costs and buys.
    bench fbcache-t1 1 "${flux[@]}" "${eager[@]}" --use_fbcache --cache_threshold 1.0 \
      --reference_run "$ref"
    bench compile-fbcache-t1 1 "${flux[@]}" "${compiled[@]}" --use_fbcache \
      --cache_threshold 1.0 --reference_run "$ref"
    bench compile-cudagraphs 1 "${flux[@]}" "${compiled[@]}" --compile_mode reduce-overhead \
      --reference_run "$ref"
    ;&
  offload)
    # Sequential offload streams ~24 GB of weights per step over PCIe: one measured image, and
    # no warm-up (its first call costs little next to a minute of transfers).
    bench offload 1 "${flux[@]}" --warmup_iters 0 --benchmark_iters 1 \
      --enable_sequential_cpu_offload --no_save_images
    ;;
  ulysses4)  # xDiT picks cuDNN attention by itself under sequence parallelism
    bench u4-compile 4 "${flux[@]}" "${compiled[@]}" --reference_run "$ref"
    bench u4-compile-blocks 4 "${flux[@]}" "${compiled[@]}" --compile_scope blocks \
      --reference_run "$ref"
    bench u4-best 4 "${flux[@]}" "${compiled[@]}" --compile_scope blocks --use_fp8_t5_encoder \
      --use_fbcache --reference_run "$ref"
    bench u4-fp8t5 4 "${flux[@]}" "${eager[@]}" --use_fp8_t5_encoder --reference_run "$ref"
    ;;&
  ulysses4|ulysses4-rest)
    bench u4-teacache 4 "${flux[@]}" "${eager[@]}" --use_teacache --reference_run "$ref"
    bench u4-fbcache 4 "${flux[@]}" "${eager[@]}" --use_fbcache --reference_run "$ref"
    bench u4-fbcache-t1 4 "${flux[@]}" "${eager[@]}" --use_fbcache --cache_threshold 1.0 \
      --reference_run "$ref"
    bench u4-sdpa-flash 4 "${flux[@]}" "${eager[@]}" --attention_backend sdpa_flash \
      --reference_run "$ref"
    # Block-level against whole-forward compilation at Ulysses 4, with more iterations (no
    # --reference_run: the baseline measured 2 images, and the benchmark refuses to compare 5).
    bench u4-compile-blocks-5 4 "${flux[@]}" --use_torch_compile --warmup_iters 2 \
      --benchmark_iters 5 --compile_scope blocks
    ;;
esac
python scripts/gpu/options_table.py "$base" | tee "$WORK/logs/options_table.txt"
