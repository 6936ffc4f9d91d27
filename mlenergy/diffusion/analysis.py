"""From raw measurements to the numbers a reader needs: statistics and steadiness, the stage
split, the physical floor, the idle baseline. Pure functions over plain data."""

from __future__ import annotations

import logging

from typing import TYPE_CHECKING

from mlenergy.diffusion import stats
from mlenergy.diffusion.probes import checks, flops, stage_records, timeline
from mlenergy.diffusion.record import Analysis

if TYPE_CHECKING:
    from mlenergy.diffusion.record import RunRecord

logger = logging.getLogger("mlenergy.diffusion")


def per_image_statistics(times: list[float], energies: list[float | None], batch_size: int) -> dict:
    """Latency and energy per image over the measured iterations, and whether they were steady
    (coefficient of variation at most stats.STEADY_CV_LIMIT)."""
    latency = stats.summarize([t / batch_size for t in times])
    measured = all(e is not None for e in energies)
    energy = stats.summarize([e / batch_size for e in energies]) if measured else None
    cvs = {"latency": latency["cv"], "energy": energy["cv"] if energy else None}
    unsteady = [k for k, cv in cvs.items() if cv is not None and cv > stats.STEADY_CV_LIMIT]
    if unsteady:
        logger.warning("Measured iterations are not steady: coefficient of variation of %s above "
                       "%.0f%% (%s); consider more warm-up or more iterations",
                       " and ".join(unsteady), 100 * stats.STEADY_CV_LIMIT,
                       ", ".join(f"{k} {100 * cvs[k]:.1f}%" for k in unsteady))
    return {
        "latency_per_image_stats": latency,
        "energy_per_image_stats": energy,
        "steadiness": {
            "steady": None if all(cv is None for cv in cvs.values()) else not unsteady,
            "latency_cv": cvs["latency"],
            "energy_cv": cvs["energy"],
            "cv_limit": stats.STEADY_CV_LIMIT,
        },
    }


def physical_floor(*, per_rank_counts: list[dict], analytic: dict | None, forwards_per_iteration: float,
                   breakdown: dict, iteration_time_s: float, iteration_energy_j: float | None,
                   num_gpus: int, gpu_model: str, dtype: str) -> dict:
    total = sum(c["total"] for c in per_rank_counts)
    attention = sum(c["attention"] for c in per_rank_counts)
    if attention == 0:
        logger.warning("FLOP count: no attention operator was counted; the floor is too low")
    section = flops.floor(
        flops_per_forward=total, forwards_per_iteration=forwards_per_iteration,
        denoising_time_s=breakdown["denoising"]["time_s"],
        denoising_energy_j=breakdown["denoising"]["energy_j"],
        iteration_time_s=iteration_time_s, iteration_energy_j=iteration_energy_j,
        num_gpus=num_gpus, peak_tflops_per_gpu=flops.peak_tflops(gpu_model, dtype))
    section.update({
        "attention_flops_per_forward": attention,
        "counted_on_ranks": len(per_rank_counts),
        "method": "torch.utils.flop_counter.FlopCounterMode on the run's denoiser",
        "flops_by_operator": _sum_ops(per_rank_counts),
        "analytic_flops_per_forward": analytic["total"] if analytic else None,
        "counted_over_analytic": total / analytic["total"] if analytic else None,
    })
    return section


def _sum_ops(counts: list[dict]) -> dict:
    out: dict[str, int] = {}
    for c in counts:
        for op, n in c["by_op"].items():
            out[op] = out.get(op, 0) + n
    return out


def analyze(record: RunRecord, denoiser) -> Analysis:
    """Every measurement section of results.json beyond the headline numbers."""
    plan, seen = record.plan, record.observations
    per_iteration = [r.stages for r in record.iterations]
    breakdown = stage_records.stage_breakdown(per_iteration)
    times, energies = record.times, record.energies
    per_image = per_image_statistics(times, energies, plan.batch_size)
    floor = None
    if seen.flop_counts:
        analytic = flops.analytic_forward_flops(plan.spec.family.name, denoiser, plan.height,
                                                plan.width, plan.max_sequence_length,
                                                plan.batch_size)
        floor = physical_floor(
            per_rank_counts=seen.flop_counts, analytic=analytic,
            forwards_per_iteration=sum(r["denoiser_forwards"] for r in per_iteration)
            / len(per_iteration),
            breakdown=breakdown, iteration_time_s=sum(times) / len(times),
            iteration_energy_j=None if None in energies else sum(energies) / len(energies),
            num_gpus=record.num_gpus, gpu_model=record.gpu_model, dtype=plan.dtype)
    whole, block = record.whole, seen.timeline
    before, after = seen.nvml_reads
    return Analysis(
        stage_breakdown=breakdown, stage_fence=seen.fence_mode,
        steps=stage_records.step_summary(per_iteration),
        physical_floor=floor,
        idle_baseline=seen.idle_baseline,
        energy_cross_check={
            "nvml": checks.nvml_cross_check(before, after, whole.gpu_energy),
            "timeline": checks.timeline_self_check(
                whole.gpu_energy,
                timeline.energy_between(block, *record.window) if block else None),
        },
        gpu_exclusivity=seen.exclusivity,
        host_energy={
            "source": "RAPL through Zeus; never added into the GPU figures",
            "cpu_energy_j": _total(whole.cpu_energy), "dram_energy_j": _total(whole.dram_energy),
        },
        **per_image,
    )


def _total(energy: dict | None) -> float | None:
    return sum(energy.values()) if energy else None
