"""Check finished runs: complete, with a real GPU energy measurement, and (with `--measurement`)
the whole GPU measurement (stage split, steps, floor, timeline, self-checks).

    mlenergy-diffusion check RUN_DIR_OR_TREE [...]
    mlenergy-diffusion check --measurement RUN_DIR_OR_TREE [...]

Each path is a run directory (it holds results.json) or a tree of them, walked as `report`
walks it. Exit status 1 when any run fails a check (each problem is one `FAIL RUN_DIR: ...` line
on stderr), 2 on bad input; the last line counts the runs that passed and failed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Annotated, Sequence

import tyro

from mlenergy.diffusion.argcheck import parse_one_line
from mlenergy.diffusion.config import help_from_docstrings
from mlenergy.diffusion.console import si_text
from mlenergy.diffusion.files import DRIVER_LOG, REQUESTS, RESULTS
from mlenergy.diffusion.results_reader import (
    ResultsError,
    StoredResults,
    load_results,
    run_dirs,
)
from mlenergy.diffusion.task import TASKS, TEXT_TO_IMAGE

PROG = "mlenergy-diffusion check"
# A self-check (timeline or direct NVML read against Zeus) further off than this fails.
CROSS_CHECK_TOLERANCE = 0.03


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class CheckArgs:
    """Check that runs are complete and hold a real GPU energy measurement."""

    run_dirs: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(
        metavar="RUN_DIR", help_behavior_hint="(one or more)")]]
    """Run directories (each holds results.json) or trees of them (e.g. run/ after a sweep):
    every file must be there, energy per image finite and positive, and the GPUs' names and
    power limits recorded."""

    measurement: bool = False
    """Also print each run's measurement (stage split, step latencies, FLOP floor, timeline,
    idle power, self-checks) and fail when a GPU run lacks any of them."""


def completeness_problems(run_dir: Path) -> list[str]:
    """What makes `run_dir` not a complete GPU run; empty when it is one."""
    found = [f"{name} is missing" for name in (RESULTS, REQUESTS, DRIVER_LOG)
             if not (run_dir / name).is_file()]
    if found:
        return found
    try:
        stored = load_results(run_dir)
    except ResultsError as err:
        return [f"{RESULTS}: {err}"]
    doc = stored.doc
    outputs = run_dir / TASKS.get(stored.task, TEXT_TO_IMAGE).output_dir
    expected = doc.get("total_images")
    saved = list(outputs.iterdir()) if outputs.is_dir() else []
    if len(saved) != expected:
        found.append(f"{outputs.name} holds {len(saved)} files, expected {expected}")
    for iteration in stored.iterations:
        for output in iteration.get("images", iteration.get("videos", [])):
            if not (run_dir / output).is_file():
                found.append(f"{output} listed but missing")
    energy = doc.get("energy_per_image")
    if not isinstance(energy, (int, float)) or not math.isfinite(energy) or energy <= 0:
        found.append(f"energy per image is {_plain(energy)}: energy was not measured")
    if not doc.get("iteration_energy_measurements"):
        found.append("iteration_energy_measurements is missing")
    gpus = (doc.get("environment") or {}).get("gpus") or []
    if not gpus or not all(g.get("name") for g in gpus):
        found.append("GPU name not recorded")
    if not gpus or not all((g.get("power_limit_w") or 0) > 0 for g in gpus):
        found.append("GPU power limit not recorded")
    return found


def _plain(value) -> str:
    return "null" if value is None else str(value)


def _num(value, spec: str, unit: str = "") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:{spec}}{unit}"


def _percent(fraction) -> str:
    return _num(None if fraction is None else 100 * fraction, ".1f", "%")


def measurement_report(stored: StoredResults) -> tuple[list[str], list[str]]:
    """(lines describing the run's measurement, problems a GPU run must not have)."""
    doc = stored.doc
    breakdown = doc.get("stage_breakdown")
    if not breakdown:
        return [], ["stage_breakdown is missing"]
    lines, problems = _stage_lines(doc, breakdown)
    floor = doc.get("physical_floor")
    if floor:
        lines.append(_floor_line(floor))
    else:
        problems.append("physical_floor is missing")
    _add_power_lines(doc, lines, problems)
    lines.append(f"exclusive      {_exclusivity_text(doc.get('gpu_exclusivity'))}")
    lines.append(f"host energy    {_host_energy_text(doc.get('host_energy'))}")
    lines.append(f"fence          {doc.get('stage_fence') or 'not recorded'}")
    plot = stored.run_dir / "power_timeline.png"
    lines.append(f"plot           {plot if plot.exists() else 'not drawn'}")
    return lines, problems


def _floor_line(floor: dict) -> str:
    analytic = floor.get("analytic_flops_per_forward")
    return (f"floor          {si_text(floor.get('flops_per_forward'), 'FLOP')}/forward"
            + (f" (analytic {si_text(analytic, 'FLOP')})" if analytic else "")
            + f", {si_text(_scaled(floor.get('achieved_tflops'), 1e12), 'FLOP/s')} achieved"
            + f", MFU {_percent(floor.get('mfu'))}"
            + f", {si_text(_scaled(floor.get('joules_per_tflop'), 1e-12), 'J/FLOP')}"
            + f", time floor {si_text(floor.get('time_floor_s'), 's')}"
            + f", energy floor {si_text(floor.get('energy_floor_j'), 'J')}")


def _scaled(value, factor: float):
    return None if value is None else value * factor


def _steadiness_text(steadiness) -> str:
    if not isinstance(steadiness, dict):
        return "not recorded"
    verdict = {True: "yes", False: "NO", None: "unknown"}[steadiness.get("steady")]
    return (f"{verdict} (CV of latency {_percent(steadiness.get('latency_cv'))}, "
            f"of energy {_percent(steadiness.get('energy_cv'))}; limit "
            f"{_percent(steadiness.get('cv_limit'))})")


def _exclusivity_text(exclusivity) -> str:
    if not isinstance(exclusivity, dict):
        return "not recorded"
    if exclusivity.get("exclusive"):
        return "yes, no other process on the run's GPUs"
    foreign = exclusivity.get("foreign_pids") or {}
    found = "; ".join(f"GPU {gpu}: PIDs {', '.join(str(p) for p in pids)}"
                      for gpu, pids in foreign.items() if pids)
    return f"NO, other processes: {found or 'more contexts than the run holds'}"


def _host_energy_text(host) -> str:
    if not isinstance(host, dict):
        return "not recorded"
    cpu, dram = host.get("cpu_energy_j"), host.get("dram_energy_j")
    if cpu is None and dram is None:
        return "not readable (no RAPL)"
    return f"CPU {_num(cpu, ',.1f', ' J')}, DRAM {_num(dram, ',.1f', ' J')} (not in GPU energy)"


def _stage_lines(doc: dict, breakdown: dict) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    total = sum(v["time_s"] for v in breakdown.values()) or 1.0
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
                 + (f", {energy['mean']:,.1f} J (CV {_percent(energy['cv'])})"
                    if energy else ""))
    lines.append(f"steady         {_steadiness_text(doc.get('steadiness'))}")
    return lines, problems


def _samples_text(per_gpu: dict) -> str:
    return ", ".join(f"GPU {gpu} {len(samples)}" for gpu, samples in per_gpu.items())


def _add_power_lines(doc: dict, lines: list[str], problems: list[str]) -> None:
    timeline = doc.get("timeline") or {}
    if not timeline.get("power"):
        problems.append("no power timeline")
    else:
        power = "; ".join(f"{domain}: {_samples_text(per)}"
                          for domain, per in timeline["power"].items())
        temperature = _samples_text(timeline.get("temperature") or {}) or "none"
        lines.append(f"timeline       power samples ({power}), temperature samples "
                     f"({temperature})")
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


def _check_one(run_dir: Path, completeness: bool, measurement: bool) -> list[str]:
    problems = completeness_problems(run_dir) if completeness else []
    if measurement:
        try:
            stored = load_results(run_dir)
        except ResultsError as err:
            return problems or [f"{RESULTS}: {err}"]
        lines, measurement_problems = measurement_report(stored)
        print("\n".join([f"{run_dir}:", *(f"  {line}" for line in lines)]))
        problems += measurement_problems
    return problems


def _ok_line(run_dir: Path) -> str:
    doc = load_results(run_dir).doc
    return (f"ok   {run_dir}: {_num(doc.get('avg_time_per_image'), '.3f', ' s')}/image, "
            f"{_num(doc.get('energy_per_image'), ',.1f', ' J')}/image on "
            f"{doc.get('gpu_model') or 'an unrecorded device'}")


def check_runs(paths: Sequence[Path], *, completeness: bool = True,
               measurement: bool = False) -> int:
    """Check every run each path names (a run directory, or a tree of them); print `ok` lines,
    measurements and the count on stdout, `FAIL` lines on stderr. Returns the exit status: 1
    if any run failed (or a path holds no run), else 0."""
    passed = failed = 0
    for path in paths:
        found = run_dirs(path)
        if not found:
            print(f"FAIL {path}: {RESULTS} is missing, and no run directory lies under it",
                  file=sys.stderr)
            failed += 1
            continue
        for run_dir in found:
            problems = _check_one(run_dir, completeness, measurement)
            for problem in problems:
                print(f"FAIL {run_dir}: {problem}", file=sys.stderr)
            failed += bool(problems)
            passed += not problems
            if completeness and not problems:
                print(_ok_line(run_dir))
    print(f"{passed + failed} run(s) checked: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_one_line(
        lambda a: tyro.cli(CheckArgs, args=a, use_underscores=True, prog=PROG,
                           description=CheckArgs.__doc__),
        sys.argv[1:] if argv is None else argv, prog=PROG)
    if not args.run_dirs:
        print("error: name at least one run directory (the one that holds results.json) or a "
              "tree of them", file=sys.stderr)
        return 2
    return check_runs(args.run_dirs, measurement=args.measurement)


if __name__ == "__main__":
    from mlenergy.diffusion.cli import exit_quietly_on_broken_pipe

    sys.exit(exit_quietly_on_broken_pipe(main))
