#!/usr/bin/env bash
# One H100: FLUX.1-dev (full-size architecture, random weights), 1024x1024, 28 steps, batch 1,
# 8 measured iterations, with the whole measurement: stage split, step latencies, power and
# temperature timelines and their plot, idle baseline, FLOP floor, NVML and timeline
# self-checks. About 2 minutes of GPU time. Packs the run directory (plot included) into $OUT.
#   bash scripts/gpu/h100_measurement.sh
cd "$(dirname "$0")/../.."
PACK_NAME=measurement
source scripts/gpu/collect.sh
nvidia-smi --query-gpu=name,power.limit,driver_version,memory.total --format=csv
nvidia-smi --query-compute-apps=pid,used_memory --format=csv
python -c "import matplotlib" 2>/dev/null \
  || echo "matplotlib is missing here: draw the plot later with scripts/plot_timeline.py RUN_DIR"
base="$WORK/t2i/black-forest-labs/FLUX.1-dev"
BENCH_TIMEOUT=240 bench flux-measurement 1 workload:text-to-image \
  --workload.model_id black-forest-labs/FLUX.1-dev --workload.weights random \
  --workload.height 1024 --workload.width 1024 --workload.inference_steps 28 \
  --workload.batch_size 1 --benchmark_iters 8 --idle_baseline_s 3 \
  --workload.base_dir "$base" --overwrite_results
run_dir=$(dirname "$(find "$base" -name results.json | head -1)")
python -m mlenergy.diffusion.tools.check_runs --measurement "$run_dir"
cp "$run_dir"/results.json "$OUT"/measurement-results.json 2>/dev/null
cp "$run_dir"/power_timeline.png "$OUT"/ 2>/dev/null || true
