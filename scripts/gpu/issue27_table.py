"""Issue 27's lines from a grouped campaign and the same points launched alone: per point s/image,
J/image and the start-up phases, then the sweep's GPU time booked against measured.

    python scripts/gpu/issue27_table.py GROUPED_OUT_DIR ALONE_OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlenergy.diffusion.results.results_reader import RunResults  # noqa: E402


def _points(out: Path) -> dict[int, RunResults]:
    found = {}
    for results in sorted(out.rglob("results.json")):
        stored = RunResults.load(results)
        found[stored.batch_size] = stored
    return found


def main(grouped: Path, alone: Path) -> None:
    together, apart = _points(grouped), _points(alone)
    print("batch | s/image | J/image | group pos | to first window s | warm-up s | alone s/image"
          " | alone J/image | diff s | diff J")
    for batch, run in sorted(together.items()):
        s = run.section("startup")
        seconds, joules = run.time_per_output, run.energy_per_output
        line = (f"{batch} | {seconds:.4f} | {joules or 0:.1f}"
                f" | {s.get('group_position')}/{s.get('group_size')}"
                f" | {s.get('to_first_window_s') or 0:.1f} | {s.get('warmup_s') or 0:.1f}")
        other = apart.get(batch)
        if other is not None:
            dt = seconds / other.time_per_output - 1
            de = (joules / other.energy_per_output - 1
                  if joules and other.energy_per_output else float("nan"))
            line += (f" | {other.time_per_output:.4f} | {other.energy_per_output or 0:.1f}"
                     f" | {dt:+.2%} | {de:+.2%}")
        print(line)
    first = next(iter(sorted(together.items())), (None, None))[1]
    if first is not None:
        once = {k: first.section("startup")[k] for k in ("imports_s", "process_group_s",
                                                         "inputs_s", "load_s", "idle_baseline_s")}
        print("once per process:", json.dumps({k: round(v, 2) if v else v
                                                for k, v in once.items()}))
    for out in (grouped, alone):
        summary = out / "sweep_summary.json"
        if summary.exists():
            gpu = json.loads(summary.read_text()).get("gpu_time")
            print(f"{out.name}: {gpu}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
