"""From raw measurements to the numbers a reader needs: statistics and steadiness, the stage
split, the physical floor, the idle baseline. Pure functions over plain data."""

from __future__ import annotations

import logging

from mlenergy.diffusion import flops, gpu_checks, stages, stats, timeline

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


def idle_baseline(block: dict | None, start: float, end: float) -> dict:
    power = timeline.mean_power(block, start, end) if block else None
    return {"start_time": start, "end_time": end, "duration_s": end - start,
            "mean_power_w": power,
            "total_power_w": sum(power.values()) if power else None}


def measurement_sections(plan, *, records, whole_run, gpu_model: str, flop_counts, denoiser,
                         fence_mode: str, timeline_block, idle_window, exclusivity, nvml_reads,
                         benchmark_window) -> dict:
    """Every measurement key of results.json beyond the headline numbers, in reading order."""
    stage_records = [r.stages for r in records]
    breakdown = stages.stage_breakdown(stage_records)
    times = [r.measurement.time for r in records]
    energies = [r.measurement.total_gpu_energy for r in records]
    sections = {"stage_breakdown": breakdown, "stage_fence": fence_mode,
                "steps": stages.step_summary(stage_records)}
    sections.update(per_image_statistics(times, energies, plan.batch_size))
    sections["physical_floor"] = None
    if flop_counts:
        analytic = flops.analytic_forward_flops(plan.spec.family.name, denoiser, plan.height,
                                                plan.width, plan.max_sequence_length,
                                                plan.batch_size)
        sections["physical_floor"] = physical_floor(
            per_rank_counts=flop_counts, analytic=analytic,
            forwards_per_iteration=sum(r["denoiser_forwards"] for r in stage_records) / len(records),
            breakdown=breakdown, iteration_time_s=sum(times) / len(times),
            iteration_energy_j=None if None in energies else sum(energies) / len(energies),
            num_gpus=plan.num_gpus, gpu_model=gpu_model, dtype=plan.dtype)
    sections["idle_baseline"] = idle_baseline(timeline_block, *idle_window) if idle_window else None
    sections["energy_cross_check"] = {
        "nvml": gpu_checks.nvml_cross_check(_merged(r[0] for r in nvml_reads),
                                            _merged(r[1] for r in nvml_reads),
                                            whole_run.gpu_energy),
        "timeline": gpu_checks.timeline_self_check(
            whole_run.gpu_energy,
            timeline.energy_between(timeline_block, *benchmark_window) if timeline_block else None),
    }
    sections["gpu_exclusivity"] = exclusivity
    sections["host_energy"] = {
        "source": "RAPL through Zeus; never added into the GPU figures",
        "cpu_energy_j": _total(whole_run.cpu_energy), "dram_energy_j": _total(whole_run.dram_energy),
    }
    return sections


def _merged(parts) -> dict | None:
    merged: dict = {}
    for part in parts:
        if part:
            merged.update(part)
    return merged or None


def _total(energy: dict | None) -> float | None:
    return sum(energy.values()) if energy else None
