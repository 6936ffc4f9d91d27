#!/usr/bin/env bash
# Issue 17, second device call on one 4-GPU host: profiles of compiled steps (1 GPU, Ulysses 2,
# U2 x R2, ring 2) and ring attention compiled whole (its version check made constant) against
# ring attention kept eager. Same workload as issue17.sh; 2 measured iterations per run.
#   phase 1: GPU 0 1 GPU bf16 | GPUs 2,3 Ulysses 2           (each + profile of 4 steps)
#   phase 2: GPUs 0-3 Ulysses 2 x ring 2, ring attention traced (falls back to eager ring)
#   phase 3: GPUs 0,1 ring 2 traced | GPUs 2,3 ring 2 eager
# Usage (repo root holding mlenergy/ and scripts/): bash scripts/gpu/issue17_profiles.sh [DEADLINE_S]
set -u
DEADLINE=${1:-205}
W=/tmp/issue17b; mkdir -p "$W/logs" "$W/extra" "$W/runs"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor \
  MLENERGY_EXTRA_OUT=$W/extra NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1 MLENERGY_COLLECTIVE_TIMEOUT_S=120 MLENERGY_PROFILE_STEPS=4
pack() {
  (cd "$W" && find logs extra runs \( -name '*.json' -o -name '*.txt' -o -name '*.log' \) -print0 \
    | tar --null -czf "$OUT/issue17_profiles.tgz" -T -)
}
trap pack EXIT
ARGS=(--use_torch_compile --compile_scope blocks --warmup_iters 2 --benchmark_iters 2
      workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev
      --workload.weights random --no_save_images)
# run NAME GPUS NPROC "ENV=1 ..." ARGS...
run() {
  local name=$1 gpus=$2 n=$3 envs=$4; shift 4
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt 50 ]; then echo "--- $name skipped at ${SECONDS} s (deadline)"; return 1; fi
  echo "=== $name start ${SECONDS} s GPUs $gpus: $envs torchrun --nproc_per_node=$n ... $*"
  env $envs CUDA_VISIBLE_DEVICES="$gpus" MLENERGY_TAG="$name" timeout "$left" \
    torchrun --standalone --nproc_per_node="$n" scripts/gpu/issue17_run.py "$@" \
    --workload.base_dir "$W/runs/$name" > "$W/logs/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc end ${SECONDS} s"
  grep -E "time / image  |energy / image|average power|compile  |step latency" \
    "$W/logs/$name.log" | head -8
  [ $rc -eq 0 ] || grep -h "Error" "$W/logs/$name.log" | head -3
  return $rc
}
run bf16 0 1 "" "${ARGS[@]}" > "$W/logs/p1a.txt" 2>&1 &
A=$!
run u2 2,3 2 "" --ulysses_degree 2 "${ARGS[@]}" > "$W/logs/p1b.txt" 2>&1 &
B=$!
wait $A $B; cat "$W/logs/p1a.txt" "$W/logs/p1b.txt"
run u2r2-traced 0,1,2,3 4 "" --ulysses_degree 2 --ring_degree 2 "${ARGS[@]}" \
  || run u2r2-eager 0,1,2,3 4 "MLENERGY_EAGER_RING=1" --ulysses_degree 2 --ring_degree 2 "${ARGS[@]}"
run r2-traced 0,1 2 "" --ring_degree 2 "${ARGS[@]}" > "$W/logs/p3a.txt" 2>&1 &
A=$!
run r2-eager 2,3 2 "MLENERGY_EAGER_RING=1" --ring_degree 2 "${ARGS[@]}" > "$W/logs/p3b.txt" 2>&1 &
B=$!
wait $A $B; cat "$W/logs/p3a.txt" "$W/logs/p3b.txt"
for f in "$W"/extra/*-rank0.json; do
  echo "$f"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: (round(v,3) if isinstance(v,float) else v) for k,v in d.items() if k!='per_step'}); print({k: round(v,4) for k,v in d['per_step'].items()})" "$f"
done
echo "done at ${SECONDS} s"
