"""--profile_steps: after a point's measured windows, one pipeline call of that many steps under
torch.profiler on every rank, gathered into results.json `profile` on rank 0 (output/record.py
ProfileReport), with rank 0's kernel table in the run directory."""

from __future__ import annotations

import logging

from mlenergy.diffusion.output import describe
from mlenergy.diffusion.output.record import ProfileReport, RankProfile
from mlenergy.diffusion.planning.run_plan import RunPlan
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results import files

logger = logging.getLogger("mlenergy.diffusion")


def profile_point(plan: RunPlan, ranks, pipeline, batch: list[str]) -> ProfileReport | None:
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
    per_rank = runtime.all_gather_object({"rank": ranks.rank, **summary})
    if not ranks.is_main:
        return None
    files.write_text_atomically(plan.run_dir / files.PROFILE_TABLE, table)
    profiled = [RankProfile.from_results(p) for p in per_rank]
    logger.info("Profile of %d steps (after the measured phase): %s", plan.profile_steps,
                describe.profile_text(profiled[0]))
    return ProfileReport(steps_profiled=plan.profile_steps, steps_summarized=profiled[0].steps,
                         kernel_table=files.PROFILE_TABLE, ranks=profiled)
