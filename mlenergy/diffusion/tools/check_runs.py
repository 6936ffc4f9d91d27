"""Check finished runs: complete, with a real GPU energy measurement, and (with `--measurement`)
the whole GPU measurement (stage split, steps, floor, timeline, self-checks). A self-check fails
when the run judged it failed (its `within_tolerance`): the checker has no tolerance of its own
that could disagree with the run's. A check that carries no verdict (the direct NVML read, older
results) is judged at the tolerance the run uses (`SelfCheck.passed`).

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

from mlenergy.diffusion.inputs.argcheck import parse_one_line
from mlenergy.diffusion.inputs.config import help_from_docstrings
from mlenergy.diffusion.inputs.task import TASKS, TEXT_TO_IMAGE
from mlenergy.diffusion.process.console import si_text
from mlenergy.diffusion.results.files import DRIVER_LOG, REQUESTS, RESULTS
from mlenergy.diffusion.results.results_reader import ResultsError, RunResults, run_dirs
from mlenergy.diffusion.results.results_sections import (
    Exclusivity, HostEnergy, PhysicalFloor, StageTotals, Steadiness, Timeline,
)

PROG = "mlenergy-diffusion check"


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
        stored = RunResults.load(run_dir)
    except ResultsError as err:
        return [f"{RESULTS}: {err}"]
    outputs = run_dir / TASKS.get(stored.task, TEXT_TO_IMAGE).output_dir
    expected = stored.total_images
    saved = list(outputs.iterdir()) if outputs.is_dir() else []
    if len(saved) != expected:
        found.append(f"{outputs.name} holds {len(saved)} files, expected {expected}")
    for iteration in stored.iterations:
        for output in iteration.outputs:
            if not (run_dir / output).is_file():
                found.append(f"{output} listed but missing")
    energy = stored.energy_per_output
    if not isinstance(energy, (int, float)) or not math.isfinite(energy) or energy <= 0:
        found.append(f"energy per image is {_plain(energy)}: energy was not measured")
    if not stored.energy_windows:
        found.append("iteration_energy_measurements is missing")
    gpus = stored.gpus
    if not gpus or not all(g.name for g in gpus):
        found.append("GPU name not recorded")
    if not gpus or not all((g.power_limit_w or 0) > 0 for g in gpus):
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


def measurement_report(stored: RunResults) -> tuple[list[str], list[str]]:
    """(lines describing the run's measurement, problems a GPU run must not have)."""
    breakdown = stored.stage_breakdown
    if not breakdown:
        return [], ["stage_breakdown is missing"]
    lines, problems = _stage_lines(stored, breakdown)
    floor = stored.physical_floor
    if floor:
        lines.append(_floor_line(floor))
    else:
        problems.append("physical_floor is missing")
    _add_power_lines(stored, lines, problems)
    lines.append(f"exclusive      {_exclusivity_text(stored.exclusivity)}")
    lines.append(f"host energy    {_host_energy_text(stored.host_energy)}")
    lines.append(f"fence          {stored.stage_fence or 'not recorded'}")
    plot = stored.run_dir / "power_timeline.png"
    lines.append(f"plot           {plot if plot.exists() else 'not drawn'}")
    return lines, problems


def _floor_line(floor: PhysicalFloor) -> str:
    analytic = floor.analytic_flops_per_forward
    return (f"floor          {si_text(floor.flops_per_forward, 'FLOP')}/forward"
            + (f" (analytic {si_text(analytic, 'FLOP')})" if analytic else "")
            + f", {si_text(_scaled(floor.achieved_tflops, 1e12), 'FLOP/s')} achieved"
            + f", MFU {_percent(floor.mfu)}"
            + f", {si_text(_scaled(floor.joules_per_tflop, 1e-12), 'J/FLOP')}"
            + f", time floor {si_text(floor.time_floor_s, 's')}"
            + f", energy floor {si_text(floor.energy_floor_j, 'J')}")


def _scaled(value, factor: float):
    return None if value is None else value * factor


def _steadiness_text(steadiness: Steadiness | None) -> str:
    if steadiness is None:
        return "not recorded"
    verdict = {True: "yes", False: "NO", None: "unknown"}[steadiness.steady]
    return (f"{verdict} (CV of latency {_percent(steadiness.latency_cv)}, "
            f"of energy {_percent(steadiness.energy_cv)}; limit "
            f"{_percent(steadiness.cv_limit)})")


def _exclusivity_text(exclusivity: Exclusivity | None) -> str:
    if exclusivity is None:
        return "not recorded"
    if exclusivity.exclusive:
        return "yes, no other process on the run's GPUs"
    foreign = exclusivity.foreign_pids or {}
    found = "; ".join(f"GPU {gpu}: PIDs {', '.join(str(p) for p in pids)}"
                      for gpu, pids in foreign.items() if pids)
    return f"NO, other processes: {found or 'more contexts than the run holds'}"


def _host_energy_text(host: HostEnergy | None) -> str:
    if host is None:
        return "not recorded"
    cpu, dram = host.cpu_energy_j, host.dram_energy_j
    if cpu is None and dram is None:
        return "not readable (no RAPL)"
    return f"CPU {_num(cpu, ',.1f', ' J')}, DRAM {_num(dram, ',.1f', ' J')} (not in GPU energy)"


def _stage_lines(stored: RunResults,
                 breakdown: dict[str, StageTotals]) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    total = sum(v.time_s for v in breakdown.values()) or 1.0
    for stage, v in breakdown.items():
        energy = "not measured" if v.energy_j is None else f"{v.energy_j:,.1f} J"
        lines.append(f"{stage:14} {v.time_s:8.3f} s ({100 * v.time_s / total:5.1f}%)  {energy}")
    if breakdown["denoising"].energy_j is None:
        problems.append("denoising energy was not measured")
    steps = stored.steps
    if steps:
        lines.append(f"steps          mean {1e3 * steps.mean:.1f} ms, median "
                     f"{1e3 * steps.median:.1f} ms, p90 {1e3 * steps.p90:.1f} ms "
                     f"({steps.n} steps)")
    else:
        problems.append("no per-step latencies")
    latency, energy = stored.latency_per_image, stored.energy_per_image
    ci = latency.ci95
    lines.append(f"per image      {latency.mean:.3f} s"
                 + (f" (CI {ci[0]:.3f}-{ci[1]:.3f}, p99 {latency.p99:.3f})" if ci else "")
                 + (f", {energy.mean:,.1f} J (CV {_percent(energy.cv)})" if energy else ""))
    lines.append(f"steady         {_steadiness_text(stored.steadiness)}")
    return lines, problems


def _samples_text(per_gpu: dict) -> str:
    return ", ".join(f"GPU {gpu} {len(samples)}" for gpu, samples in per_gpu.items())


def _add_power_lines(stored: RunResults, lines: list[str], problems: list[str]) -> None:
    timeline = stored.timeline or Timeline()
    if not timeline.power:
        problems.append("no power timeline")
    else:
        power = "; ".join(f"{domain}: {_samples_text(per)}"
                          for domain, per in timeline.power.items())
        temperature = _samples_text(timeline.temperature or {}) or "none"
        lines.append(f"timeline       power samples ({power}), temperature samples "
                     f"({temperature})")
    idle = stored.idle_baseline
    if idle is None or idle.total_power_w is None:
        problems.append("no idle baseline")
    else:
        lines.append(f"idle           {idle.total_power_w:.1f} W over {idle.duration_s:.1f} s")
    checks = stored.self_checks
    for name in ("timeline", "nvml"):
        check = checks.get(name)
        if check is None or check.relative_difference is None:
            problems.append(f"{name} cross-check is missing")
            continue
        difference = check.relative_difference
        lines.append(f"check {name:8} {100 * difference:+.3f}%")
        # The run's own verdict (SelfCheck.passed), not a tolerance of the checker's.
        if check.passed is False:
            problems.append(f"{name} cross-check differs by {100 * difference:+.2f}%")


def _check_one(run_dir: Path, completeness: bool, measurement: bool) -> list[str]:
    problems = completeness_problems(run_dir) if completeness else []
    if measurement:
        try:
            stored = RunResults.load(run_dir)
        except ResultsError as err:
            return problems or [f"{RESULTS}: {err}"]
        lines, measurement_problems = measurement_report(stored)
        print("\n".join([f"{run_dir}:", *(f"  {line}" for line in lines)]))
        problems += measurement_problems
    return problems


def _ok_line(run_dir: Path) -> str:
    stored = RunResults.load(run_dir)
    return (f"ok   {run_dir}: {_num(stored.time_per_output, '.3f', ' s')}/image, "
            f"{_num(stored.energy_per_output, ',.1f', ' J')}/image on "
            f"{stored.gpu_model or 'an unrecorded device'}")


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
    from mlenergy.diffusion.process.console import exit_quietly_on_broken_pipe

    sys.exit(exit_quietly_on_broken_pipe(main))
