"""The typed record of a run: filled in as the run goes, read by the summary and the plot, and
written out once, by results_writer.py, as results.json. Its measurement sections are the probes'
(probes/__init__.py ProbeSections), composed by analysis.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mlenergy.diffusion.probes.energy import Measurement
from mlenergy.diffusion.results.sections import Section

if TYPE_CHECKING:
    from mlenergy.diffusion.engine.options_apply import OptionEffects
    from mlenergy.diffusion.output.environment import RunEnvironment
    from mlenergy.diffusion.output.node_sharing import SharingRecord
    from mlenergy.diffusion.output.provenance import Provenance
    from mlenergy.diffusion.output.startup import StartupSection
    from mlenergy.diffusion.planning.run_plan import RunPlan
    from mlenergy.diffusion.probes import ProbeSections
    from mlenergy.diffusion.probes.checks import EnergyCrossCheck, Exclusivity
    from mlenergy.diffusion.probes.compile import CompileReport
    from mlenergy.diffusion.probes.energy import HostEnergy
    from mlenergy.diffusion.probes.flops import PhysicalFloor
    from mlenergy.diffusion.probes.stage_records import (
        IterationStages, StageBreakdown, StepSummary,
    )
    from mlenergy.diffusion.probes.timeline import IdleBaseline


@dataclass
class IterationRecord:
    index: int
    measurement: Measurement
    prompts: list[str]
    # Saved images or videos, relative to the run directory.
    outputs: list[str] = field(default_factory=list)
    # Wall-clock start and end of the iteration's window; its stages (probes/stage_records.py).
    window: tuple[float, float] | None = None
    stages: IterationStages | None = None


@dataclass
class LoadRecord:
    seconds: float
    denoiser_parameters: int
    parameter_gb: float
    # What the options did to the pipeline (fp8_t5_encoder, quantized_denoiser, attention).
    option_effects: OptionEffects
    compiled: str | None


@dataclass
class WarmupRecord:
    seconds: float
    iteration_times: list[float]
    # (graphs compiled, seconds compiling) per warm-up iteration.
    compiles: list[tuple]


@dataclass
class Statistics(Section):
    """stats.summarize over the measured iterations, e.g. results.json
    `latency_per_image_stats`."""

    n: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    stdev: float | None
    # The 95% confidence interval of the mean: [low, high].
    ci95: list[float] | None
    cv: float | None


@dataclass
class Steadiness(Section):
    """results.json `steadiness`: whether the coefficients of variation stayed under the limit
    (None when neither could be computed)."""

    steady: bool | None
    latency_cv: float | None
    energy_cv: float | None
    cv_limit: float


@dataclass
class Analysis(Section):
    """Every measurement section after the iterations, in results.json order (analysis.py)."""

    stage_breakdown: StageBreakdown
    stage_fence: str
    steps: StepSummary | None
    latency_per_image_stats: Statistics
    energy_per_image_stats: Statistics | None
    steadiness: Steadiness
    physical_floor: PhysicalFloor | None
    idle_baseline: IdleBaseline | None
    energy_cross_check: EnergyCrossCheck
    gpu_exclusivity: Exclusivity | None
    host_energy: HostEnergy


@dataclass
class ImageQuality(Section):
    image: str
    reference_image: str
    # None when the images are identical (PSNR is infinite).
    psnr_db: float | None
    ssim: float
    identical: bool
    # Videos: the frames compared (PSNR over all of them, SSIM their mean); None for images.
    frames: int | None = None


@dataclass
class QualityReport(Section):
    """results.json `quality` (quality.py's report, with --reference_run)."""

    reference_run: str
    # The reference run's own `configurations`, copied as its results.json holds them (runs of
    # earlier versions hold other keys) and never read by key: read-only.
    reference_configurations: Mapping[str, Any] | None
    num_images: int
    identical_images: int
    # None when any image is identical (PSNR is infinite).
    mean_psnr_db: float | None
    mean_ssim: float | None
    min_ssim: float | None
    images: list[ImageQuality]
    lpips: str
    clip_score: str

    @classmethod
    def from_results(cls, entries: dict | None) -> QualityReport | None:
        if entries is None:
            return None
        configurations = entries.get("reference_configurations")
        return cls(**{**entries, "images": [ImageQuality(**image) for image in entries["images"]],
                      "reference_configurations": None if configurations is None
                      else MappingProxyType(dict(configurations))})


@dataclass
class RankProfile(Section):
    """One rank's profiled steps (profiling/step_profile.py's summary): where each step's time
    goes and what the GPU draws meanwhile."""

    rank: int
    # Its GPU, as results key GPUs (the global index).
    gpu: str
    steps: int
    # Mean seconds per step: wall, busy, compute, communication, exposed communication, idle;
    # and collective kernels per step.
    per_step: Mapping[str, float]
    communication_share: float
    exposed_communication_share: float
    idle_share: float
    waiting_share: float
    # Per kernel class (matmul, attention, communication, other): ms_per_step, kernels_per_step.
    by_class: Mapping[str, Mapping[str, float]]
    top_kernels: list[Mapping[str, Any]]
    # compute / exposed_communication / idle: samples and mean_w.
    power_by_activity: Mapping[str, Mapping[str, Any]]
    power_samples_in_steps: int
    # None where no power sample fell inside the steps.
    energy_per_step_j: float | None
    waiting_energy_j: float | None
    method: str

    @classmethod
    def from_results(cls, entries: dict | None) -> RankProfile | None:
        if entries is None:
            return None
        return cls(**{k: MappingProxyType(dict(v)) if isinstance(v, dict) else v
                      for k, v in entries.items()})


@dataclass
class MeasuredWaiting(Section):
    """One rank's waiting inside the measured windows (profiling/waiting.py
    in_measured_windows): its profile's shares applied to the measured denoising stage, mean
    per iteration."""

    rank: int
    gpu: str
    denoising_s: float
    # This rank's GPU over the denoising stage; None where not measured.
    denoising_energy_j: float | None
    waiting_s: float
    waiting_energy_j: float | None
    # The profiled step's wall over the measured step's: how far the profiler stretched it.
    profiled_over_measured_step: float
    method: str


@dataclass
class ProfileReport(Section):
    """results.json `profile` (--profile_steps): one profiled pipeline call after the measured
    phase, outside every window, per rank; and each rank's waiting in the measured windows
    that its profile implies."""

    steps_profiled: int
    steps_summarized: int
    # Where rank 0's kernel table went, relative to the run directory.
    kernel_table: str
    ranks: list[RankProfile]
    # None where the measured iterations' steps could not be timed.
    measured_windows: list[MeasuredWaiting] | None = None


@dataclass
class RunRecord:
    plan: RunPlan
    started: datetime
    environment: RunEnvironment
    gpu_model: str
    num_gpus: int
    prompt_source: str
    load: LoadRecord
    warmup: WarmupRecord
    iterations: list[IterationRecord]
    whole: Measurement
    window: tuple[float, float]
    observations: ProbeSections
    compile: CompileReport | None = None
    quality: QualityReport | None = None
    analysis: Analysis | None = None
    provenance: Provenance | None = None
    # Other runs of the campaign on this node during the measurement (None: not started by a
    # sweep, so unknown); see output/node_sharing.py.
    shared_node_runs: list[SharingRecord] | None = None
    # Where the time before the first measured window went (startup.py).
    startup: StartupSection | None = None
    # --profile_steps: one profiled call after the measured phase.
    profile: ProfileReport | None = None

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
        out = {"warmup_iteration_times": self.warmup.iteration_times,
               "compile": self.compile.to_results() if self.compile else None,
               **self.load.option_effects.to_results()}
        if self.quality is not None:
            out["quality"] = self.quality.to_results()
        out["profile"] = self.profile.to_results() if self.profile is not None else None
        return out
