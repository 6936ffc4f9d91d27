"""Everything that watches a run, apart from the run itself: energy windows, power and
temperature timelines, the GPUs' exclusivity and idle power, the stage and step hooks, FLOPs and
compilation counters. Each probe is a small module; all of them reach the devices through one
`RunGpus` (gpus.py). Each hands back a typed section (protocol.py); `Probes.gather` derives what
needs more than one probe's section (the floor, the energy cross-check) once, and the results'
side only composes and writes them.

A new probe is a module with a class following protocol.Probe, named in ADDED_PROBES; its
section is written under its RESULTS_KEY."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mlenergy.diffusion.probes import checks, memory, timeline
from mlenergy.diffusion.probes.checks import EnergyCrossCheck, Exclusivity
from mlenergy.diffusion.probes.compile import CompileTracker
from mlenergy.diffusion.probes.decoded_values import DecodedValuesProbe
from mlenergy.diffusion.probes.energy import EnergyMeter, HostEnergy
from mlenergy.diffusion.probes.flops import FlopsProbe, PhysicalFloor
from mlenergy.diffusion.probes.gpus import RunGpus
from mlenergy.diffusion.probes.protocol import MeasuredPhase, Probe
from mlenergy.diffusion.probes.stage_records import StageProbe, StageSection
from mlenergy.diffusion.probes.timeline import IdleBaseline, PowerTimeline, TimelineProbe
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results.sections import Section

logger = logging.getLogger("mlenergy.diffusion")

# Probes beyond the ones the run's own sections come from: classes with
# `start(plan, gpus, pipeline)`, started in this order after the stage hooks, gathered after
# the others; each section goes into results.json under its RESULTS_KEY.
ADDED_PROBES: tuple = (DecodedValuesProbe,)


@dataclass
class Baseline:
    """What a process measures once, before its first point, for every point it measures: the
    power timeline's monitor (running until the process's last point is gathered) and the idle
    GPUs' power."""

    gpus: RunGpus
    monitor: timeline.TimelineMonitor
    idle_window: tuple[float, float] | None
    # Rank 0's; None elsewhere and when not measured.
    idle_baseline: IdleBaseline | None

    @classmethod
    def take(cls, gpus: RunGpus, idle_seconds: float) -> Baseline:
        """Once the pipeline is loaded (every rank holds its device context), before any hook."""
        monitor = timeline.TimelineMonitor(gpus)
        idle_window = timeline.idle_baseline_window(idle_seconds, gpus)
        idle = None
        if idle_window is not None:
            # Every node's samples of the idle window, merged on rank 0.
            blocks = runtime.all_gather_object(monitor.block(None, idle_window[1]))
            if gpus.ranks.is_main:
                idle = timeline.idle_baseline(timeline.merge_blocks(blocks, *idle_window),
                                              *idle_window)
        return cls(gpus=gpus, monitor=monitor, idle_window=idle_window, idle_baseline=idle)

    def stop(self) -> None:
        self.monitor.stop()


@dataclass
class ProbeSections:
    """What the probes saw on every rank, gathered on rank 0, one typed section each."""

    timeline: PowerTimeline
    stages: StageSection
    # None when FLOPs were not counted.
    physical_floor: PhysicalFloor | None
    energy_cross_check: EnergyCrossCheck
    host_energy: HostEnergy
    gpu_exclusivity: Exclusivity | None
    # The process's idle baseline (taken once, before its first point).
    idle_baseline: IdleBaseline | None
    # Peak device memory of the measured iterations, per rank (None without CUDA).
    peak_memory_gb: list[float | None]
    # The sections of ADDED_PROBES, in their order.
    added: list[Section]


@dataclass
class Probes:
    gpus: RunGpus
    meter: EnergyMeter
    baseline: Baseline
    stages: StageProbe
    timeline: TimelineProbe
    flops: FlopsProbe
    compiles: CompileTracker
    exclusivity: Exclusivity | None
    added: list[Probe]

    @classmethod
    def start(cls, plan, baseline: Baseline, pipeline, first: bool) -> Probes:
        """For one point, once the baseline is taken: the energy meter, the exclusivity check,
        then the stage hooks and the added probes."""
        gpus = baseline.gpus
        # A process's first point keeps every sample from the monitor's start, idle window
        # included, as a point launched alone does.
        since = None if first else time.time()
        meter = EnergyMeter(gpus)
        exclusivity = checks.check_run_gpus(gpus, plan.require_exclusive_gpus)
        stages = StageProbe.start(plan, gpus, pipeline)
        return cls(gpus=gpus, meter=meter, baseline=baseline, stages=stages,
                   timeline=TimelineProbe(baseline.monitor, since),
                   flops=FlopsProbe(plan, stages.recorder), compiles=CompileTracker(),
                   exclusivity=exclusivity,
                   added=[probe.start(plan, gpus, pipeline) for probe in ADDED_PROBES])

    @property
    def recorder(self):
        """The stage hooks (the run loop passes their step callback to the pipeline)."""
        return self.stages.recorder

    def begin_iteration(self, measured: bool) -> None:
        for probe in (self.stages, *self.added):
            probe.begin_iteration(measured)

    def end_iteration(self, measured: bool) -> None:
        for probe in (self.stages, *self.added):
            probe.end_iteration(measured)

    def gather(self, phase: MeasuredPhase, gpu_model: str) -> ProbeSections | None:
        """Every rank's observations merged on rank 0 (None elsewhere); `gpu_model` names the
        GPUs whose peak the floor is measured against. FLOPs are counted first, right after the
        measured windows."""
        flop_count = self.flops.gather(phase)
        timeline_section = self.timeline.gather(phase)
        stages = self.stages.gather(phase)
        nvml_reads = runtime.all_gather_object(phase.nvml_reads)
        peaks = runtime.all_gather_object(memory.peak_memory_gb(self.gpus.ranks.device))
        added = [probe.gather(phase) for probe in self.added]
        if not self.gpus.ranks.is_main:
            return None
        floor = None
        if flop_count is not None:
            forwards = [it.denoiser_forwards for it in stages.iterations]
            floor = flop_count.floor(
                forwards_per_iteration=sum(forwards) / len(forwards),
                denoising=stages.stage_breakdown.denoising, phase=phase,
                num_gpus=self.gpus.total, gpu_model=gpu_model, dtype=self.flops.plan.dtype)
        whole = phase.whole
        sampled = timeline.energy_between(timeline_section.to_results(), *phase.window) \
            if timeline_section.sampled else None
        return ProbeSections(
            timeline=timeline_section, stages=stages, physical_floor=floor,
            energy_cross_check=EnergyCrossCheck.of(checks.merged_nvml_reads(nvml_reads),
                                                   whole.gpu_energy, sampled),
            host_energy=HostEnergy.of(whole), gpu_exclusivity=self.exclusivity,
            idle_baseline=self.baseline.idle_baseline, peak_memory_gb=peaks,
            added=[section for section in added if section is not None])

