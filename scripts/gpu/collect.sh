# Sourced by the GPU run scripts: a work folder, a logged benchmark launcher, and a tarball of
# every results.json, requests.json, log and power plot (no images) packed on exit into $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
WORK=${WORK:-/tmp/mlenergy-gpu}
mkdir -p "$OUT" "$WORK/logs"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
pack() {
  (cd "$WORK" && find . \( -name results.json -o -name requests.json -o -name driver_log.txt \
     -o -name model_info.json -o -name '*.log' -o -name '*.json' \
     -o -name power_timeline.png \) -print0 \
     | tar --null -czf "$OUT/${PACK_NAME:-runs}.tgz" -T -)
}
trap pack EXIT
# bench NAME NPROC ARGS...: one benchmark run, its log kept, never hanging past its timeout.
bench() {
  local name=$1 nproc=$2; shift 2
  echo "=== $name: torchrun --nproc_per_node=$nproc mlenergy/diffusion/benchmark.py $*"
  timeout "${BENCH_TIMEOUT:-600}" torchrun --nproc_per_node="$nproc" \
    mlenergy/diffusion/benchmark.py "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  sed -n '/Summary/,/Results written/p' "$WORK/logs/$name.log" | sed '1d;$d'
  [ $rc -eq 0 ] || { echo "!!! $name exited $rc"; tail -25 "$WORK/logs/$name.log"; }
  return 0
}
