"""The summary table a person reads at the end of a run, from the run's record."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mlenergy.diffusion.output.record import RunRecord, Statistics
from mlenergy.diffusion.process.console import si_text
from mlenergy.diffusion.results import stats

if TYPE_CHECKING:
    from mlenergy.diffusion.probes.flops import PhysicalFloor

# A percentile is printed only from at least this many samples (the p90 of 8 is the maximum).
MIN_SAMPLES_FOR_P90 = 10


def _fmt(value, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not measured"
    return f"{value:{spec}}{unit}"


def summary_table(record: RunRecord) -> str:
    plan = record.plan
    unit = plan.task.noun
    frames = f", {plan.num_frames} frames at {plan.fps} fps" if plan.task.is_video else ""
    latency = record.analysis.latency_per_image_stats
    per_iteration = Statistics(**stats.summarize(record.times))
    rows = [
        ("model", f"{plan.spec.model_id} ({plan.weights} weights, {plan.dtype})"),
        ("device", (f"{record.gpu_model} x{record.num_gpus}" if record.num_gpus
                    else f"CPU ({record.gpu_model}), {plan.world_size} process(es)")
         + f", ulysses {plan.ulysses_degree} x ring {plan.ring_degree}"),
        ("shape", f"batch {plan.batch_size}, {plan.height}x{plan.width}, "
                  f"{plan.inference_steps} steps{frames}"),
        ("iterations", f"{len(record.iterations)} measured"),
        ("latency / batch", _fmt(per_iteration.mean, ".3f", " s")
         + f"  (median {per_iteration.median:.3f} s)"),
        (f"time / {unit}", _fmt(record.time_per_output, ".3f", " s")
         + (f"  (95% CI of mean {latency.ci95[0]:.3f}-{latency.ci95[1]:.3f} s)"
            if latency.ci95 else "")),
        (f"{unit}s / s", _fmt(record.throughput, ".3f")),
        (f"energy / {unit}", _fmt(record.energy_per_output, ",.1f", " J")),
        ("average power", _fmt(record.average_power, ",.1f", " W")),
        ("peak memory", _fmt(record.peak_memory_gb, ".2f", " GB")),
    ]
    if latency.n >= MIN_SAMPLES_FOR_P90:
        rows.append((f"time / {unit} p90", _fmt(latency.p90, ".3f", " s")))
    if record.compile:
        c = record.compile
        rows.append(("compile", f"{_fmt(c.compile_time_s, '.1f', ' s')} compiling (dynamo)"
                     + _first_call_text(c.first_warmup_iteration_s, c.first_call_overhead_s)
                     + (", RECOMPILED while measuring" if c.recompiled_during_measurement
                        else "")))
    if record.quality:
        from mlenergy.diffusion.results.quality import summary_text

        # quality.py words its own report (as results.json holds it, for finished runs too).
        rows.append(("vs reference", summary_text(record.quality.to_results())))
    rows += _measurement_rows(record)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _first_call_text(first: float | None, overhead: float | None) -> str:
    """The first warm-up iteration and what it cost over a steady one: compiling, but also
    kernel tuning at run time, which dynamo's count does not see."""
    if first is None:
        return ""
    extra = f", {overhead:.1f} s over a steady one" if overhead is not None else ""
    return f"; first call {first:.1f} s{extra}"


def _measurement_rows(record: RunRecord) -> list[tuple[str, str]]:
    a = record.analysis
    rows = []
    steadiness = a.steadiness
    if steadiness.latency_cv is not None:
        energy_cv = steadiness.energy_cv
        rows.append(("variation (CV)", f"latency {100 * steadiness.latency_cv:.1f}%"
                     + (f", energy {100 * energy_cv:.1f}%" if energy_cv is not None else "")
                     + ("" if steadiness.steady else "  NOT STEADY")))
    stages = a.stage_breakdown.items()
    rows.append(("stages / batch", "time (share), energy"))
    total = sum(v.time_s for _, v in stages) or 1.0
    for stage, v in stages:
        energy = "" if v.energy_j is None else f", {v.energy_j:,.1f} J"
        rows.append((f"  {stage.replace('_', ' ')}",
                     f"{v.time_s:.3f} s ({100 * v.time_s / total:.1f}%){energy}"))
    if a.steps:
        steps = a.steps
        rows.append(("step latency", f"mean {steps.mean * 1e3:.1f} ms, median "
                     f"{steps.median * 1e3:.1f} ms"
                     + (f", p90 {steps.p90 * 1e3:.1f} ms"
                        if steps.n >= MIN_SAMPLES_FOR_P90 else "")))
    rows += _floor_rows(a.physical_floor)
    rows += _check_rows(record)
    return rows


def _floor_rows(floor: PhysicalFloor | None) -> list[tuple[str, str]]:
    if not floor:
        return []
    analytic = floor.analytic_flops_per_forward
    achieved = floor.achieved_tflops
    return [
        ("FLOP / forward", si_text(floor.flops_per_forward, "FLOP")
         + (f"  (analytic {si_text(analytic, 'FLOP')})" if analytic else "")),
        ("achieved", ("not measured" if achieved is None else si_text(achieved * 1e12, "FLOP/s"))
         + (f", MFU {100 * floor.mfu:.1f}%" if floor.mfu is not None else "")),
        ("floor ratio", "denoising time / floor "
         + _fmt(floor.denoising_time_over_floor, ".2f", "x")
         + "; energy floor " + _fmt(floor.energy_floor_j, ",.1f", " J")),
    ]


def _check_rows(record: RunRecord) -> list[tuple[str, str]]:
    a = record.analysis
    rows = []
    if a.idle_baseline and a.idle_baseline.total_power_w is not None:
        rows.append(("idle power", f"{a.idle_baseline.total_power_w:,.1f} W"))
    check = a.energy_cross_check
    if check.timeline:
        rows.append(("self-check", "timeline vs counter "
                     f"{100 * check.timeline.relative_difference:+.2f}%"))
    if check.nvml and check.nvml.relative_difference is not None:
        rows.append(("NVML check",
                     f"direct read vs Zeus {100 * check.nvml.relative_difference:+.2f}%"))
    exclusive = a.gpu_exclusivity
    if exclusive and not exclusive.exclusive:
        rows.append(("GPU sharing", "other processes: " + "; ".join(
            f"GPU {gpu}: PIDs {', '.join(str(pid) for pid in pids)}"
            for gpu, pids in exclusive.foreign_pids.items() if pids)))
    return rows
