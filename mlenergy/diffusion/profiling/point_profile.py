"""--profile_steps: after a point's measured windows, one pipeline call of that many steps under
torch.profiler on every rank, gathered into results.json `profile` on rank 0 (output/record.py
ProfileReport), with rank 0's kernel table in the run directory; then each rank's waiting inside
the measured windows, from its profile's shares and the measured denoising stage."""

from __future__ import annotations

import dataclasses
import logging

from mlenergy.diffusion.output import describe
from mlenergy.diffusion.output.record import MeasuredWaiting, ProfileReport, RankProfile
from mlenergy.diffusion.planning.run_plan import RunPlan
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results import files

logger = logging.getLogger("mlenergy.diffusion")


def profile_point(plan: RunPlan, ranks, gpus, pipeline, batch: list[str]) -> ProfileReport | None:
    """The profiles of every rank, on rank 0 (None elsewhere, and without the flag). Every rank
    calls it, after the measured windows: the profiled call and the gather are collective."""
    if not plan.profile_steps:
        return None
    from mlenergy.diffusion.engine import xdit
    from mlenergy.diffusion.profiling import step_profile

    inner = getattr(pipeline, "module", pipeline)
    denoiser = getattr(inner, plan.spec.family.denoiser_slot)
    summary, table = step_profile.profile_call(
        lambda: xdit.generate(pipeline, plan, batch, seed=plan.seed, device=ranks.device,
                              steps=plan.profile_steps), denoiser, ranks.device)
    per_rank = runtime.all_gather_object(
        {"rank": ranks.rank, "gpu": gpus.key(ranks.local_rank), **summary})
    if not ranks.is_main:
        return None
    files.write_text_atomically(plan.run_dir / files.PROFILE_TABLE, table)
    profiled = [RankProfile.from_results(p) for p in per_rank]
    logger.info("Profile of %d steps (after the measured phase): %s", plan.profile_steps,
                describe.profile_text(profiled[0]))
    return ProfileReport(steps_profiled=plan.profile_steps, steps_summarized=profiled[0].steps,
                         kernel_table=files.PROFILE_TABLE, ranks=profiled)


def with_measured_windows(report: ProfileReport | None, stages) -> ProfileReport | None:
    """The report with each rank's waiting inside the measured windows (rank 0, after the
    stages are gathered: probes/stage_records.py StageSection). Left without it where the
    measured steps could not be timed."""
    if report is None or stages is None or stages.steps is None:
        return report
    from mlenergy.diffusion.profiling import waiting

    measured = []
    for rank in report.ranks:
        estimate = waiting.in_measured_windows(
            rank.to_results(), stages.stage_breakdown.denoising.time_s,
            _denoising_energy(stages, rank.gpu), stages.steps.mean)
        measured.append(MeasuredWaiting(rank=rank.rank, gpu=rank.gpu, **estimate))
    logger.info("Waiting in the measured windows, per rank: %s",
                describe.measured_waiting_text(measured))
    return dataclasses.replace(report, measured_windows=measured)


def _denoising_energy(stages, gpu: str) -> float | None:
    """Mean joules per measured iteration of one GPU over the denoising stage; None unless every
    iteration measured it."""
    per_iteration = [(it.stages["denoising"].get("gpu_energy_j") or {}).get(gpu)
                     for it in stages.iterations]
    if not per_iteration or None in per_iteration:
        return None
    return sum(per_iteration) / len(per_iteration)
