#!/usr/bin/env bash
# Issue 28 on two H200s of one host: FLUX.1-dev 1024x1024 28 steps batch 1, random weights,
# compiled by blocks (warm-up 2, 3 measured), one shared kernel cache.
#   bash scripts/gpu/issue28.sh [DEADLINE_S]          one GPU, ring 2, Ulysses 2, Ulysses 2 + fa3,
#                                                     Ulysses 2 + FP8
#   bash scripts/gpu/issue28.sh [DEADLINE_S] levers   one GPU and the levers, each profiled
#       (--profile_steps 3: per-rank idle, communication and the energy of waiting): ring 2,
#       Ulysses 2 + fa3, each with --compile_overlap and with CUDA graphs of the blocks
#       (--compile_mode reduce-overhead), then FP8 at the best of them
# One line per run in $OUT/issue28.txt, logs, results and profile tables in $OUT/issue28.tgz.
set -uo pipefail
DEADLINE=${1:-420}
SET=${2:-table}
W=/tmp/issue28; mkdir -p "$W/logs" "$W/runs"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor \
  MLENERGY_COLLECTIVE_TIMEOUT_S=600
pack() {
  (cd "$W" && find logs runs \( -name '*.json' -o -name '*.log' -o -name '*.txt' \) \
      -not -name requests.json -print0 \
    | tar --null -czf "$OUT/issue28.tgz" -T -)
  python3 scripts/gpu/issue24_lines.py "$W/runs" > "$OUT/issue28.txt" 2>&1
}
trap pack EXIT
ARGS=(--use_torch_compile --compile_scope blocks --warmup_iters 2 workload:text-to-image
      --workload.model_id black-forest-labs/FLUX.1-dev --workload.weights random
      --benchmark_iters 3 --no_save_images)
run() {  # run NAME NPROC NEED_S FLAGS...
  local name=$1 n=$2 need=$3; shift 3
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt "$need" ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 0; fi
  echo "=== $name start ${SECONDS} s"
  timeout -k 10 "$left" torchrun --standalone --nproc_per_node="$n" mlenergy/diffusion/benchmark.py \
    "$@" "${ARGS[@]}" --workload.base_dir "$W/runs/$name" 2>&1 | tee "$W/logs/$name.log" \
    | grep -E "time / image  |energy / image|compile  |Attention:|Profile of|error"
  echo "=== $name rc=${PIPESTATUS[0]} end ${SECONDS} s"
  pack
}
nvidia-smi --query-gpu=index,name,power.limit,driver_version --format=csv
if [ "$SET" = levers ]; then
  P=(--profile_steps 3)
  run one 1 80 "${P[@]}"
  run ring2 2 80 --ring_degree 2 "${P[@]}"
  run uly2fa3 2 70 --ulysses_degree 2 --attention_backend fa3 "${P[@]}"
  run ring2overlap 2 70 --ring_degree 2 --compile_overlap "${P[@]}"
  run uly2fa3overlap 2 70 --ulysses_degree 2 --attention_backend fa3 --compile_overlap "${P[@]}"
  run ring2graphs 2 90 --ring_degree 2 --compile_mode reduce-overhead "${P[@]}"
  run uly2fa3graphs 2 90 --ulysses_degree 2 --attention_backend fa3 \
    --compile_mode reduce-overhead "${P[@]}"
  run ring2fp8 2 70 --ring_degree 2 --quantize_denoiser fp8 "${P[@]}"
  run uly2fa3fp8 2 70 --ulysses_degree 2 --attention_backend fa3 --quantize_denoiser fp8
else
  run one 1 80
  run ring2 2 80 --ring_degree 2
  run uly2 2 80 --ulysses_degree 2
  run uly2fa3 2 70 --ulysses_degree 2 --attention_backend fa3
  run uly2fp8 2 70 --ulysses_degree 2 --quantize_denoiser fp8
fi
