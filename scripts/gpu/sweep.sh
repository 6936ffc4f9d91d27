#!/usr/bin/env bash
# The sweep runner, report and plots on real GPUs: FLUX.1-dev and PixArt-Sigma (random full-size
# weights) x batch 1 and 2 x (ulysses, ring) in 1x1 2x1 1x2 (2-GPU points skipped on one GPU),
# 512x512, 2 measured iterations; then a rerun that must skip every done point, and the report.
#   bash scripts/gpu/sweep.sh
cd "$(dirname "$0")/../.."
PACK_NAME=sweep
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=name,power.limit,driver_version,memory.total --format=csv
grid=(--models black-forest-labs/FLUX.1-dev PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
      --batch_sizes 1 2 --parallel 1x1 2x1 1x2 --out_dir "$WORK/run" --timeout_s 900
      -- --workload.weights random --workload.height 512 --workload.width 512
      --benchmark_iters 2 --no_save_images)
python3 -m mlenergy.diffusion.sweep "${grid[@]}" > "$WORK/logs/sweep.log" 2>&1
echo "sweep rc=$?"; sed -n '/Sweep summary/,$p' "$WORK/logs/sweep.log"
python3 -m mlenergy.diffusion.sweep "${grid[@]}" > "$WORK/logs/sweep-rerun.log" 2>&1
echo "rerun rc=$?"; tail -2 "$WORK/logs/sweep-rerun.log"
python3 -m mlenergy.diffusion.report "$WORK/run" --out_dir "$WORK/report"
echo "report rc=$?"
tar -czf "$OUT/sweep-report.tgz" -C "$WORK" report
