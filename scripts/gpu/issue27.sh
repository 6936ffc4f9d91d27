#!/usr/bin/env bash
# Issue 27 on one H200: a one-GPU image campaign of the v3 shape for one model (PixArt-Sigma,
# random full-size weights, its defaults: 1024x1024, 20 steps, 8 measured iterations; batch
# 1 2 4 8 16), through the sweep, points grouped (the default); then batch 4 launched alone
# (--one_point_per_process) for the grouped-vs-alone comparison. One phase per call:
#   bash scripts/gpu/issue27.sh eager|compiled [DEADLINE_S]
# Lines in $OUT/issue27-<phase>.txt; summaries, logs and results in $OUT/issue27-<phase>.tgz.
set -uo pipefail
PHASE=${1:?eager or compiled}; DEADLINE=${2:-560}
W=/tmp/issue27; mkdir -p "$W"
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
MODEL=PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
case "$PHASE" in
  eager) OPTIONS=(--options=) ;;
  compiled) OPTIONS=("--options=--use_torch_compile --compile_scope transformer") ;;
  *) echo "phase: eager or compiled" >&2; exit 2 ;;
esac
pack() {
  (cd "$W" && find . \( -name '*.json' -o -name '*.log' -o -name 'driver_log.txt' \) -print0 \
    | tar --null -czf "$OUT/issue27-$PHASE.tgz" -T -)
  python3 scripts/gpu/issue27_table.py "$W/$PHASE-grouped" "$W/$PHASE-alone" \
    > "$OUT/issue27-$PHASE.txt" 2>&1
  cat "$OUT/issue27-$PHASE.txt"
}
trap pack EXIT
nvidia-smi --query-gpu=index,name,power.limit,driver_version --format=csv
COMMON=(--models "$MODEL" --parallel 1x1 "${OPTIONS[@]}" --compile_cache "$W/compile_cache")
BENCH=(-- --workload.weights random --no_save_images)
echo "=== grouped campaign start ${SECONDS} s"
timeout $(( DEADLINE - SECONDS - 100 )) python3 -m mlenergy.diffusion.sweep "${COMMON[@]}" \
  --batch_sizes 1 2 4 8 16 --out_dir "$W/$PHASE-grouped" "${BENCH[@]}" 2>&1 \
  | tee "$W/$PHASE-grouped.log" | grep -vE "^\s+\|"
echo "=== grouped campaign end ${SECONDS} s"
left=$(( DEADLINE - SECONDS ))
if [ "$left" -gt 60 ]; then
  timeout "$left" python3 -m mlenergy.diffusion.sweep "${COMMON[@]}" --one_point_per_process \
    --batch_sizes 4 --out_dir "$W/$PHASE-alone" "${BENCH[@]}" 2>&1 | tee "$W/$PHASE-alone.log" \
    | tail -4
fi
# Where a launch's seconds before main() go: the slowest imports of the benchmark's module.
python3 -X importtime -c "import mlenergy.diffusion.benchmark" 2> "$W/importtime.log"
sort -t'|' -k2 -n "$W/importtime.log" | tail -25 > "$OUT/issue27-$PHASE-imports.txt"
echo "=== end ${SECONDS} s"
