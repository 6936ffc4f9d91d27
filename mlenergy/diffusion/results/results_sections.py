"""The typed blocks of results.json, as `results_reader.RunResults` hands them out: one frozen
dataclass per block that a tool reads, its fields named as the run writes them. A key a block
does not declare is left out; one the run did not write (older results) is None. The legacy
rules that need a block's own numbers live on it (`Summary.interval`, `SelfCheck.passed`).
"""

from __future__ import annotations

import dataclasses
import math

from mlenergy.diffusion.results import stats

# The tolerance the run's own self-check applies (probes/checks.SELF_CHECK_TOLERANCE, which
# imports torch, so it is not imported here; a test keeps the two equal). Used only for checks
# that carry no verdict of their own: the direct NVML read, and results older than the verdict.
SELF_CHECK_TOLERANCE = 0.03


def section(cls, block):
    """`cls` filled from the JSON object `block`: the keys it declares (None where missing),
    the others left out. None when the block is absent or not an object."""
    if not isinstance(block, dict):
        return None
    return cls(**{field.name: block.get(field.name) for field in dataclasses.fields(cls)})


def finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class Summary:
    """A statistics block (`latency_per_iteration`, `energy_per_image_stats`, `steps`, ...)."""

    mean: float | None = None
    median: float | None = None
    min: float | None = None
    max: float | None = None
    p90: float | None = None
    p99: float | None = None
    stdev: float | None = None
    cv: float | None = None
    n: int | None = None
    ci95: list | None = None

    def interval(self, n_default: int | None = None) -> tuple[float, float] | None:
        """The 95% confidence interval of the mean as recorded; for results written before
        `ci95` existed, from the sample stdev (Student t, as stats.summarize computes it) over
        `n` (or `n_default`) samples. None when there is none: one sample, or no energy."""
        if isinstance(self.ci95, list) and len(self.ci95) == 2:
            low, high = finite(self.ci95[0]), finite(self.ci95[1])
            return None if low is None or high is None else (low, high)
        mean, stdev = finite(self.mean), finite(self.stdev)
        n = self.n if self.n is not None else n_default
        if mean is None or stdev is None or not isinstance(n, int) or n < 2:
            return None
        half = stats.t_quantile_975(n - 1) * stdev / math.sqrt(n)
        return mean - half, mean + half


@dataclasses.dataclass(frozen=True)
class SelfCheck:
    """One of `energy_cross_check`'s comparisons of the counter energy with another reading."""

    relative_difference: float | None = None
    # The run's verdict and the tolerance it judged with (the timeline check records both).
    within_tolerance: bool | None = None
    tolerance: float | None = None

    @property
    def passed(self) -> bool | None:
        """The run's own verdict; for a check that carries none, the difference judged at the
        recorded tolerance, else the run's. None when there is no difference to judge."""
        if self.within_tolerance is not None:
            return self.within_tolerance
        if self.relative_difference is None:
            return None
        limit = self.tolerance if self.tolerance is not None else SELF_CHECK_TOLERANCE
        return abs(self.relative_difference) <= limit


@dataclasses.dataclass(frozen=True)
class StageTotals:
    """One stage of `stage_breakdown`: mean seconds and joules per iteration."""

    time_s: float | None = None
    energy_j: float | None = None


@dataclasses.dataclass(frozen=True)
class PhysicalFloor:
    flops_per_forward: float | None = None
    analytic_flops_per_forward: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None
    joules_per_tflop: float | None = None
    time_floor_s: float | None = None
    energy_floor_j: float | None = None


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The ML.ENERGY `timeline` block: samples per power domain and GPU, [time, value] each."""

    benchmark_start_time: float | None = None
    benchmark_end_time: float | None = None
    power: dict | None = None
    temperature: dict | None = None


@dataclasses.dataclass(frozen=True)
class IdleBaseline:
    total_power_w: float | None = None
    duration_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Steadiness:
    steady: bool | None = None
    latency_cv: float | None = None
    energy_cv: float | None = None
    cv_limit: float | None = None


@dataclasses.dataclass(frozen=True)
class Exclusivity:
    exclusive: bool | None = None
    foreign_pids: dict | None = None


@dataclasses.dataclass(frozen=True)
class HostEnergy:
    cpu_energy_j: float | None = None
    dram_energy_j: float | None = None


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU of `environment.gpus`."""

    name: str | None = None
    power_limit_w: float | None = None


@dataclasses.dataclass(frozen=True)
class EnergyWindow:
    """One of `iteration_energy_measurements`: Zeus's window of one measured iteration."""

    time: float | None = None
    gpu_energy: dict | None = None


@dataclasses.dataclass(frozen=True)
class Iteration:
    """One measured iteration: its window, prompts and saved outputs."""

    time: float | None
    start_time: float | None
    end_time: float | None
    prompts: list[str]
    # The images or videos it saved, paths relative to the run directory.
    outputs: list[str]
    stage_boundaries: list[tuple[str, float, float]]

    @classmethod
    def from_json(cls, block: dict) -> Iteration:
        outputs = block.get("images", block.get("videos"))
        return cls(time=finite(block.get("time")), start_time=block.get("start_time"),
                   end_time=block.get("end_time"), prompts=list(block.get("prompts") or []),
                   outputs=list(outputs or []),
                   stage_boundaries=[tuple(b) for b in block.get("stage_boundaries") or []])

