"""Print a GPU run's measurement (stage split, steps, floor, checks) and fail when a part that a
GPU run must have is missing.

    python scripts/check_measurement.py RUN_DIR

Fails (exit 1) when: a stage's time or the denoising energy is missing, the power timeline or the
idle baseline is absent, the FLOP count is missing, or a self-check is missing or off by more
than its tolerance. The plot is only reported (the GPU host may lack matplotlib).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def report(run_dir: Path) -> tuple[list[str], list[str]]:
    doc = json.loads((run_dir / "results.json").read_text())
    lines, problems = [], []
    breakdown = doc.get("stage_breakdown")
    if not breakdown:
        return lines, ["stage_breakdown is missing"]
    total = sum(v["time_s"] for v in breakdown.values())
    for stage, v in breakdown.items():
        energy = "not measured" if v["energy_j"] is None else f"{v['energy_j']:,.1f} J"
        lines.append(f"{stage:14} {v['time_s']:8.3f} s ({100 * v['time_s'] / total:5.1f}%)  {energy}")
    if breakdown["denoising"]["energy_j"] is None:
        problems.append("denoising energy was not measured")
    steps = doc.get("steps")
    if steps:
        lines.append(f"steps          mean {1e3 * steps['mean']:.1f} ms, median "
                     f"{1e3 * steps['median']:.1f} ms, p90 {1e3 * steps['p90']:.1f} ms "
                     f"({steps['n']} steps)")
    else:
        problems.append("no per-step latencies")
    lat, energy = doc["latency_per_image_stats"], doc.get("energy_per_image_stats")
    lines.append(f"per image      {lat['mean']:.3f} s (CI {lat['ci95'][0]:.3f}-{lat['ci95'][1]:.3f}, "
                 f"p99 {lat['p99']:.3f})" + (f", {energy['mean']:,.1f} J (CV "
                                              f"{100 * energy['cv']:.2f}%)" if energy else ""))
    lines.append(f"steady         {doc['steadiness']}")
    floor = doc.get("physical_floor")
    if floor:
        lines.append(f"floor          {floor['flops_per_forward'] / 1e12:.2f} TFLOP/forward "
                     f"(analytic {floor['analytic_flops_per_forward'] and floor['analytic_flops_per_forward'] / 1e12}), "
                     f"{floor['achieved_tflops']:.0f} TFLOP/s achieved, MFU {floor['mfu']}, "
                     f"{floor['joules_per_tflop']} J/TFLOP, time floor {floor['time_floor_s']} s, "
                     f"energy floor {floor['energy_floor_j']} J")
    else:
        problems.append("physical_floor is missing")
    timeline = doc.get("timeline") or {}
    if not timeline.get("power"):
        problems.append("no power timeline")
    else:
        counts = {d: {g: len(s) for g, s in per.items()} for d, per in timeline["power"].items()}
        lines.append(f"timeline       power samples {counts}, temperature "
                     f"{ {g: len(s) for g, s in timeline.get('temperature', {}).items()} }")
    idle = doc.get("idle_baseline")
    if not idle or idle.get("total_power_w") is None:
        problems.append("no idle baseline")
    else:
        lines.append(f"idle           {idle['total_power_w']:.1f} W over {idle['duration_s']:.1f} s")
    checks = doc.get("energy_cross_check") or {}
    for name in ("timeline", "nvml"):
        check = checks.get(name)
        if not check or check.get("relative_difference") is None:
            problems.append(f"{name} cross-check is missing")
            continue
        lines.append(f"check {name:8} {100 * check['relative_difference']:+.3f}%")
        if abs(check["relative_difference"]) > 0.03:
            problems.append(f"{name} cross-check differs by {100 * check['relative_difference']:+.2f}%")
    lines.append(f"exclusive      {doc.get('gpu_exclusivity')}")
    lines.append(f"host energy    {doc.get('host_energy')}")
    lines.append(f"fence          {doc.get('stage_fence')}")
    plot = run_dir / "power_timeline.png"
    lines.append(f"plot           {plot if plot.exists() else 'not drawn'}")
    return lines, problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/check_measurement.py RUN_DIR", file=sys.stderr)
        return 2
    lines, problems = report(Path(argv[0]))
    print("\n".join(lines))
    for problem in problems:
        print(f"FAIL {argv[0]}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
