"""From the probes' sections and the measured iterations to the measurement sections of
results.json: statistics and steadiness are derived here; everything else was derived once, by
the probes (probes/__init__.py), and is only composed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlenergy.diffusion.output.record import Analysis, Statistics, Steadiness
from mlenergy.diffusion.results import stats

if TYPE_CHECKING:
    from mlenergy.diffusion.output.record import RunRecord

logger = logging.getLogger("mlenergy.diffusion")


def per_image_statistics(times: list[float], energies: list[float | None],
                         batch_size: int) -> tuple[Statistics, Statistics | None, Steadiness]:
    """Latency and energy per image over the measured iterations, and whether they were steady
    (coefficient of variation at most stats.STEADY_CV_LIMIT)."""
    latency = Statistics(**stats.summarize([t / batch_size for t in times]))
    measured = all(e is not None for e in energies)
    energy = Statistics(**stats.summarize([e / batch_size for e in energies])) if measured \
        else None
    cvs = {"latency": latency.cv, "energy": energy.cv if energy else None}
    unsteady = [k for k, cv in cvs.items() if cv is not None and cv > stats.STEADY_CV_LIMIT]
    if unsteady:
        logger.warning("Measured iterations are not steady: coefficient of variation of %s above "
                       "%.0f%% (%s); consider more warm-up or more iterations",
                       " and ".join(unsteady), 100 * stats.STEADY_CV_LIMIT,
                       ", ".join(f"{k} {100 * cvs[k]:.1f}%" for k in unsteady))
    steadiness = Steadiness(
        steady=None if all(cv is None for cv in cvs.values()) else not unsteady,
        latency_cv=latency.cv, energy_cv=energy.cv if energy else None,
        cv_limit=stats.STEADY_CV_LIMIT)
    return latency, energy, steadiness


def analyze(record: RunRecord) -> Analysis:
    """Every measurement section of results.json beyond the headline numbers."""
    seen = record.observations
    latency, energy, steadiness = per_image_statistics(record.times, record.energies,
                                                       record.plan.batch_size)
    return Analysis(
        stage_breakdown=seen.stages.stage_breakdown, stage_fence=seen.stages.stage_fence,
        steps=seen.stages.steps, latency_per_image_stats=latency,
        energy_per_image_stats=energy, steadiness=steadiness,
        physical_floor=seen.physical_floor, idle_baseline=seen.idle_baseline,
        energy_cross_check=seen.energy_cross_check, gpu_exclusivity=seen.gpu_exclusivity,
        host_energy=seen.host_energy)
