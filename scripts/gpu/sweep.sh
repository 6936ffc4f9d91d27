#!/usr/bin/env bash
# The sweep runner, report and plots on real GPUs: FLUX.1-dev and PixArt-Sigma (random full-size
# weights) x batch 1 and 2 x (ulysses, ring) in 1x1 2x1 1x2 (2-GPU points skipped on one GPU),
# 512x512, 2 measured iterations; then a rerun that must skip every done point, and the report.
#   bash scripts/gpu/sweep.sh      (on 2 GPUs: also a two-"node" launch on this host)
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
python3 -m mlenergy.diffusion.tools.report "$WORK/run" --out_dir "$WORK/report"
echo "report rc=$?"
tar -czf "$OUT/sweep-report.tgz" -C "$WORK" report
# Two "nodes" on one 2-GPU host (one launcher per GPU, loopback rendezvous): the per-node energy
# windows merged on rank 0 must cover both GPUs, as a one-launcher Ulysses 2 run does.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  args=(--ulysses_degree 2 --benchmark_iters 2 workload:text-to-image --workload.weights random
        --workload.height 512 --workload.width 512 --no_save_images)
  for node in 0 1; do
    CUDA_VISIBLE_DEVICES=$node timeout 900 torchrun --nnodes 2 --nproc_per_node 1 \
      --node_rank $node --rdzv_endpoint 127.0.0.1:29533 mlenergy/diffusion/benchmark.py \
      "${args[@]}" --workload.base_dir "$WORK/two-node" > "$WORK/logs/two-node-$node.log" 2>&1 &
  done
  wait
  python3 - "$WORK/two-node" "$WORK/run/diffusion/text-to-image/black-forest-labs/FLUX.1-dev" <<'PY'
import glob, sys
from mlenergy.diffusion.results.results_reader import RunResults
two = RunResults.load(glob.glob(sys.argv[1] + "/*/results.json")[0])
print("two-node gpu keys", [sorted(w.gpu_energy) for w in two.energy_windows])
print("two-node: %.3f s/image, %.1f J/image" % (two.time_per_output, two.energy_per_output))
for path in glob.glob(sys.argv[2] + "/batch-1+size-512x512*uly-2+ring-1*/results.json"):
    one = RunResults.load(path)
    print("one-node: %.3f s/image, %.1f J/image" % (one.time_per_output, one.energy_per_output))
PY
fi
