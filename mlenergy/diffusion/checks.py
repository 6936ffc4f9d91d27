"""Check finished run directories: complete, with a real GPU energy measurement, and (with
`--measurement`) the whole GPU measurement (stage split, steps, floor, timeline, self-checks).

    mlenergy-diffusion check RUN_DIR [RUN_DIR ...]
    mlenergy-diffusion check --measurement RUN_DIR [RUN_DIR ...]

Exit status 1 when any run fails a check (each problem is one `FAIL RUN_DIR: ...` line on stderr),
2 on bad input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Sequence

import tyro

from mlenergy.diffusion.config import help_from_docstrings
from mlenergy.diffusion.files import DRIVER_LOG, REQUESTS, RESULTS
from mlenergy.diffusion.task import TASKS, TEXT_TO_IMAGE

# A self-check (timeline or direct NVML read against Zeus) further off than this fails.
CROSS_CHECK_TOLERANCE = 0.03


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class CheckArgs:
    """Check that run directories are complete and hold a real GPU energy measurement."""

    run_dirs: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(
        metavar="RUN_DIR", help_behavior_hint="(one or more)")]]
    """Run directories (each holds results.json): every file must be there, energy per image
    finite and positive, and the GPUs' names and power limits recorded."""

    measurement: bool = False
    """Also print each run's measurement (stage split, step latencies, FLOP floor, timeline,
    idle power, self-checks) and fail when a GPU run lacks any of them."""


def completeness_problems(run_dir: Path) -> list[str]:
    """What makes `run_dir` not a complete GPU run; empty when it is one."""
    found = [f"{name} is missing" for name in (RESULTS, REQUESTS, DRIVER_LOG)
             if not (run_dir / name).is_file()]
    if found:
        return found
    doc = json.loads((run_dir / RESULTS).read_text())
    outputs = run_dir / TASKS.get(doc.get("task"), TEXT_TO_IMAGE).output_dir
    expected = doc["total_images"]
    saved = list(outputs.iterdir()) if outputs.is_dir() else []
    if len(saved) != expected:
        found.append(f"{outputs.name} holds {len(saved)} files, expected {expected}")
    for iteration in doc["iterations"]:
        for output in iteration.get("images", iteration.get("videos", [])):
            if not (run_dir / output).is_file():
                found.append(f"{output} listed but missing")
    energy = doc.get("energy_per_image")
    if not isinstance(energy, (int, float)) or not math.isfinite(energy) or energy <= 0:
        found.append(f"energy per image is {energy!r}: energy was not measured")
    if not doc.get("iteration_energy_measurements"):
        found.append("iteration_energy_measurements is missing")
    gpus = doc.get("environment", {}).get("gpus") or []
    if not gpus or not all(g.get("name") for g in gpus):
        found.append("GPU name not recorded")
    if not gpus or not all((g.get("power_limit_w") or 0) > 0 for g in gpus):
        found.append("GPU power limit not recorded")
    return found


def measurement_report(run_dir: Path) -> tuple[list[str], list[str]]:
    """(lines describing the run's measurement, problems a GPU run must not have)."""
    doc = json.loads((run_dir / RESULTS).read_text())
    breakdown = doc.get("stage_breakdown")
    if not breakdown:
        return [], ["stage_breakdown is missing"]
    lines, problems = _stage_lines(doc, breakdown)
    floor = doc.get("physical_floor")
    if floor:
        analytic = floor["analytic_flops_per_forward"]
        lines.append(f"floor          {floor['flops_per_forward'] / 1e12:.2f} TFLOP/forward "
                     f"(analytic {analytic and analytic / 1e12}), "
                     f"{floor['achieved_tflops']:.0f} TFLOP/s achieved, MFU {floor['mfu']}, "
                     f"{floor['joules_per_tflop']} J/TFLOP, time floor {floor['time_floor_s']} s, "
                     f"energy floor {floor['energy_floor_j']} J")
    else:
        problems.append("physical_floor is missing")
    _add_power_lines(doc, lines, problems)
    lines.append(f"exclusive      {doc.get('gpu_exclusivity')}")
    lines.append(f"host energy    {doc.get('host_energy')}")
    lines.append(f"fence          {doc.get('stage_fence')}")
    plot = run_dir / "power_timeline.png"
    lines.append(f"plot           {plot if plot.exists() else 'not drawn'}")
    return lines, problems


def _stage_lines(doc: dict, breakdown: dict) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    total = sum(v["time_s"] for v in breakdown.values())
    for stage, v in breakdown.items():
        energy = "not measured" if v["energy_j"] is None else f"{v['energy_j']:,.1f} J"
        lines.append(f"{stage:14} {v['time_s']:8.3f} s ({100 * v['time_s'] / total:5.1f}%)  "
                     f"{energy}")
    if breakdown["denoising"]["energy_j"] is None:
        problems.append("denoising energy was not measured")
    steps = doc.get("steps")
    if steps:
        lines.append(f"steps          mean {1e3 * steps['mean']:.1f} ms, median "
                     f"{1e3 * steps['median']:.1f} ms, p90 {1e3 * steps['p90']:.1f} ms "
                     f"({steps['n']} steps)")
    else:
        problems.append("no per-step latencies")
    latency, energy = doc["latency_per_image_stats"], doc.get("energy_per_image_stats")
    ci = latency["ci95"]
    lines.append(f"per image      {latency['mean']:.3f} s"
                 + (f" (CI {ci[0]:.3f}-{ci[1]:.3f}, p99 {latency['p99']:.3f})" if ci else "")
                 + (f", {energy['mean']:,.1f} J (CV {100 * energy['cv']:.2f}%)" if energy else ""))
    lines.append(f"steady         {doc['steadiness']}")
    return lines, problems


def _add_power_lines(doc: dict, lines: list[str], problems: list[str]) -> None:
    timeline = doc.get("timeline") or {}
    if not timeline.get("power"):
        problems.append("no power timeline")
    else:
        counts = {d: {g: len(s) for g, s in per.items()} for d, per in timeline["power"].items()}
        temperature = {g: len(s) for g, s in timeline.get("temperature", {}).items()}
        lines.append(f"timeline       power samples {counts}, temperature {temperature}")
    idle = doc.get("idle_baseline")
    if not idle or idle.get("total_power_w") is None:
        problems.append("no idle baseline")
    else:
        lines.append(f"idle           {idle['total_power_w']:.1f} W over "
                     f"{idle['duration_s']:.1f} s")
    checks = doc.get("energy_cross_check") or {}
    for name in ("timeline", "nvml"):
        check = checks.get(name)
        if not check or check.get("relative_difference") is None:
            problems.append(f"{name} cross-check is missing")
            continue
        difference = check["relative_difference"]
        lines.append(f"check {name:8} {100 * difference:+.3f}%")
        if abs(difference) > CROSS_CHECK_TOLERANCE:
            problems.append(f"{name} cross-check differs by {100 * difference:+.2f}%")


def check_runs(run_dirs: Sequence[Path], *, completeness: bool = True,
               measurement: bool = False) -> int:
    """Check each run; print `ok` lines and measurements on stdout, `FAIL` lines on stderr.
    Returns the exit status: 1 if any run failed, else 0."""
    failed = False
    for run_dir in run_dirs:
        problems = completeness_problems(run_dir) if completeness else []
        if measurement and (run_dir / RESULTS).is_file():
            lines, measurement_problems = measurement_report(run_dir)
            print("\n".join(lines))
            problems += measurement_problems
        elif measurement and not completeness:
            problems.append(f"{RESULTS} is missing")
        for problem in problems:
            print(f"FAIL {run_dir}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        if completeness and not problems:
            doc = json.loads((run_dir / RESULTS).read_text())
            print(f"ok   {run_dir}: {doc['avg_time_per_image']:.3f} s/image, "
                  f"{doc['energy_per_image']:.1f} J/image on {doc['gpu_model']}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(CheckArgs, args=argv, use_underscores=True,
                    prog="mlenergy-diffusion check", description=CheckArgs.__doc__)
    if not args.run_dirs:
        print("error: name at least one run directory (the one that holds results.json)",
              file=sys.stderr)
        return 2
    return check_runs(args.run_dirs, measurement=args.measurement)


if __name__ == "__main__":
    sys.exit(main())
