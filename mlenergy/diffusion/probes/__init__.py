"""Everything that watches a run, apart from the run itself: energy windows, power and
temperature timelines, the GPUs' exclusivity and idle power, the stage and step hooks, FLOPs and
compilation counters. Each probe is a small module; all of them reach the devices through one
`RunGpus` (gpus.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mlenergy.diffusion import runtime
from mlenergy.diffusion.probes import checks, flops, memory, stage_records, stages, timeline
from mlenergy.diffusion.probes.compile import CompileTracker
from mlenergy.diffusion.probes.energy import EnergyMeter
from mlenergy.diffusion.probes.gpus import RunGpus

logger = logging.getLogger("mlenergy.diffusion")


@dataclass
class Baseline:
    """What a process measures once, before its first point, for every point it measures: the
    power timeline's monitor (running until the process's last point is gathered) and the idle
    GPUs' power."""

    gpus: RunGpus
    monitor: timeline.TimelineMonitor
    idle_window: tuple[float, float] | None
    # results.json `idle_baseline` (rank 0; None elsewhere and when not measured).
    idle_baseline: dict | None

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
class Probes:
    gpus: RunGpus
    meter: EnergyMeter
    monitor: timeline.TimelineMonitor
    exclusivity: dict | None
    baseline: Baseline
    recorder: stages.StageRecorder
    compiles: CompileTracker
    # Where this point's power timeline begins: the idle baseline for a process's first point,
    # the point's own start for later ones.
    timeline_from: float | None

    @classmethod
    def start(cls, plan, baseline: Baseline, pipeline, first: bool) -> Probes:
        """For one point, once the baseline is taken: the energy meter, the exclusivity check,
        then the stage hooks."""
        gpus = baseline.gpus
        # A process's first point keeps every sample from the monitor's start, idle window
        # included, as a point launched alone does.
        since = None if first else time.time()
        meter = EnergyMeter(gpus)
        exclusivity = checks.check_run_gpus(gpus, plan.config.require_exclusive_gpus)
        recorder = stages.StageRecorder(pipeline, gpus, plan.inference_steps)
        logger.info("Stage hooks: %s; step-end callback %s", recorder.describe(),
                    "passed to the pipeline" if recorder.accepts_step_callback else "not taken")
        return cls(gpus=gpus, meter=meter, monitor=baseline.monitor, exclusivity=exclusivity,
                   baseline=baseline, recorder=recorder, compiles=CompileTracker(),
                   timeline_from=since)

    @property
    def idle_baseline(self) -> dict | None:
        return self.baseline.idle_baseline

    def count_flops(self, plan) -> list[dict] | None:
        """FLOPs of one denoiser forward, counted on every rank after the measured phase."""
        if not plan.config.count_flops:
            return None
        return flops.count_on_every_rank(self.recorder.first_denoiser_call, self.gpus.ranks,
                                         fail_softly=plan.world_size == 1)

    def gather(self, window_end: float, per_rank: dict) -> dict | None:
        """Every rank's timeline samples, stage records, NVML reads and peak memory, merged on
        rank 0 (None elsewhere). `per_rank` holds this rank's `stage_records` and `nvml_reads`."""
        ranks = self.gpus.ranks
        # Every sample from well before the first window (the point's start): a value holds
        # until the next sample, so the one before a window's start is needed to know the power
        # there. The monitor goes on for the process's next point.
        blocks = runtime.all_gather_object(self.monitor.block(self.timeline_from, window_end))
        rank_stages = runtime.all_gather_object(per_rank["stage_records"])
        nvml_reads = runtime.all_gather_object(per_rank["nvml_reads"])
        peaks = runtime.all_gather_object(memory.peak_memory_gb(ranks.device))
        if not ranks.is_main:
            return None
        return {
            "timeline_blocks": blocks,
            "stage_records": stage_records.combine_ranks(rank_stages, ranks.local_world_size),
            "nvml_reads": (_merged(r[0] for r in nvml_reads), _merged(r[1] for r in nvml_reads)),
            "peak_memory_gb": peaks,
        }


def _merged(parts) -> dict | None:
    merged: dict = {}
    for part in parts:
        if part:
            merged.update(part)
    return merged or None
