#!/usr/bin/env bash
# The ML.ENERGY leaderboard campaign on a Slurm cluster: one job array per GPU count (1, 2, 4
# and 8 GPUs a task), submitted with sbatch; prints the job ids. Run it again to resume: only
# points without a complete results.json are submitted.
#   bash scripts/sweep/slurm_leaderboard.sh [OUT_DIR] [SWEEP FLAGS] [-- BENCHMARK FLAGS]
# e.g. bash scripts/sweep/slurm_leaderboard.sh run --partition gpu --time_limit 4:00:00 \
#        --array_limit 16 -- --workload.weights random
# Run it from a checkout on a file system every node sees, with the environment activated.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-run}; shift || true
exec python3 -m mlenergy.diffusion.sweep --preset leaderboard --gpus 8 --gpus_per_node 8 \
  --out_dir "$out" --timeout_s "${SWEEP_TIMEOUT_S:-3600}" --submit "$@"
