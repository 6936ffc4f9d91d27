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
# bench NAME NPROC ARGS...: one benchmark run, its log kept, never hanging past its timeout
# (BENCH_TIMEOUT seconds), nor past DEADLINE seconds after the script started: a device call has
# a hard limit, and runs skipped are better than results never packed.
bench() {
  local name=$1 nproc=$2; shift 2
  local limit=${BENCH_TIMEOUT:-600}
  if [ -n "${DEADLINE:-}" ]; then
    local left=$(( DEADLINE - SECONDS ))
    if [ "$left" -lt 30 ]; then echo "--- $name skipped: the ${DEADLINE} s deadline is near"; return 0; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "=== $name: torchrun --nproc_per_node=$nproc mlenergy/diffusion/benchmark.py $*"
  timeout "$limit" torchrun --nproc_per_node="$nproc" \
    mlenergy/diffusion/benchmark.py "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  sed -n '/Summary/,/Results written/p' "$WORK/logs/$name.log" | sed '1d;$d'
  [ $rc -eq 0 ] || { echo "!!! $name exited $rc"; tail -25 "$WORK/logs/$name.log"; }
  return 0
}
