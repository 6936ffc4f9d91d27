"""The typed record of a run: filled in as the run goes, read by the summary and the plot, and
written out once, by results.py, as results.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlenergy.diffusion.probes.energy import Measurement

if TYPE_CHECKING:
    from mlenergy.diffusion.plan import RunPlan


@dataclass
class IterationRecord:
    index: int
    measurement: Measurement
    prompts: list[str]
    # Saved images or videos, relative to the run directory.
    outputs: list[str] = field(default_factory=list)
    # Wall-clock start and end of the iteration's window; its stage record (probes/stages.py).
    window: tuple[float, float] | None = None
    stages: dict | None = None


@dataclass
class LoadRecord:
    seconds: float
    denoiser_parameters: int
    parameter_gb: float
    # What the options did to the pipeline: results.json entries (fp8_t5_encoder, attention).
    option_effects: dict
    compiled: str | None


@dataclass
class WarmupRecord:
    seconds: float
    iteration_times: list[float]
    # (graphs compiled, seconds compiling) per warm-up iteration.
    compiles: list[tuple]


@dataclass
class Observations:
    """What the probes saw on every rank, gathered on rank 0."""

    timeline: dict | None
    fence_mode: str
    # Per-rank FLOP counts of one denoiser forward; None when not counted.
    flop_counts: list[dict] | None
    # NVML counters around the measured phase, every node's GPUs: (before, after).
    nvml_reads: tuple[dict | None, dict | None]
    peak_memory_gb: list[float | None]
    exclusivity: dict | None
    # The process's idle baseline (taken once, before its first point).
    idle_baseline: dict | None
    measured_compiles: tuple


@dataclass
class Analysis:
    """Numbers derived from the raw measurements (analysis.py), in results.json order."""

    stage_breakdown: dict
    stage_fence: str
    steps: dict | None
    latency_per_image_stats: dict
    energy_per_image_stats: dict | None
    steadiness: dict
    physical_floor: dict | None
    idle_baseline: dict | None
    energy_cross_check: dict
    gpu_exclusivity: dict | None
    host_energy: dict


@dataclass
class RunRecord:
    plan: RunPlan
    started: datetime
    environment: dict
    gpu_model: str
    num_gpus: int
    prompt_source: str
    load: LoadRecord
    warmup: WarmupRecord
    iterations: list[IterationRecord]
    whole: Measurement
    window: tuple[float, float]
    observations: Observations
    compile: dict | None = None
    quality: dict | None = None
    analysis: Analysis | None = None
    provenance: dict = field(default_factory=dict)
    # Other runs of the campaign on this node during the measurement (None: not started by a
    # sweep, so unknown); see sweep/sharing.py.
    shared_node_runs: list[dict] | None = None
    # Where the time before the first measured window went (startup.py).
    startup: dict | None = None

    # -- headline numbers, from the per-iteration windows ------------------------------------
    @property
    def times(self) -> list[float]:
        return [r.measurement.time for r in self.iterations]

    @property
    def energies(self) -> list[float | None]:
        return [r.measurement.total_gpu_energy for r in self.iterations]

    @property
    def energy_measured(self) -> bool:
        """Every iteration's energy was measured (readers take 0 or NaN at face value)."""
        return all(e is not None for e in self.energies)

    @property
    def total_outputs(self) -> int:
        return self.plan.batch_size * len(self.iterations)

    @property
    def total_time(self) -> float:
        return sum(self.times)

    @property
    def total_energy(self) -> float | None:
        return sum(self.energies) if self.energy_measured else None

    @property
    def time_per_output(self) -> float:
        return self.total_time / self.total_outputs

    @property
    def throughput(self) -> float:
        return self.total_outputs / self.total_time

    @property
    def energy_per_output(self) -> float | None:
        energy = self.total_energy
        return None if energy is None else energy / self.total_outputs

    @property
    def average_power(self) -> float | None:
        energy = self.total_energy
        return None if energy is None else energy / self.total_time

    @property
    def peak_memory_gb(self) -> float | None:
        return max((p for p in self.observations.peak_memory_gb if p is not None), default=None)

    def option_results(self) -> dict[str, Any]:
        """results.json entries of the performance options, after the measurement sections."""
        out = {"warmup_iteration_times": self.warmup.iteration_times, "compile": self.compile,
               **self.load.option_effects}
        if self.quality is not None:
            out["quality"] = self.quality
        return out
