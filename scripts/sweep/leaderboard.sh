#!/usr/bin/env bash
# The ML.ENERGY leaderboard grid on this node: every registered text-to-image model x batch
# 1 2 4 8 16 x (ulysses, ring) in 1x1 1x2 2x1 1x4 2x2 4x1 1x8 2x4 4x2 8x1 (points needing more
# GPUs than this node has, or invalid for a model, are skipped), then the report. Points whose
# GPU sets are disjoint run side by side (--pack).
#   bash scripts/sweep/leaderboard.sh [OUT_DIR] [BENCHMARK FLAGS...]
# e.g. bash scripts/sweep/leaderboard.sh run --workload.weights random
# Rerunning resumes: points with results.json are skipped. SWEEP_TIMEOUT_S bounds each point.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-run}; shift || true
python3 -m mlenergy.diffusion.sweep --preset leaderboard --pack --out_dir "$out" \
  --timeout_s "${SWEEP_TIMEOUT_S:-3600}" -- "$@"
status=$?
python3 -m mlenergy.diffusion.tools.report "$out"
exit $status
