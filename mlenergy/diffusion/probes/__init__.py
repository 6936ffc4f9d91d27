"""Everything that watches a run, apart from the run itself: energy windows, power and
temperature timelines, the GPUs' exclusivity and idle power, the stage and step hooks, FLOPs and
compilation counters. Each probe is a small module; all of them reach the devices through one
`RunGpus` (gpus.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlenergy.diffusion import runtime
from mlenergy.diffusion.probes import checks, flops, memory, stage_records, stages, timeline
from mlenergy.diffusion.probes.compile import CompileTracker
from mlenergy.diffusion.probes.energy import EnergyMeter
from mlenergy.diffusion.probes.gpus import RunGpus

logger = logging.getLogger("mlenergy.diffusion")


@dataclass
class Probes:
    gpus: RunGpus
    meter: EnergyMeter
    monitor: timeline.TimelineMonitor
    exclusivity: dict | None
    idle_window: tuple[float, float] | None
    recorder: stages.StageRecorder
    compiles: CompileTracker

    @classmethod
    def start(cls, plan, gpus: RunGpus, pipeline) -> Probes:
        """Once the pipeline is loaded (every rank holds its device context): the monitors, the
        exclusivity check, the idle baseline, then the stage hooks."""
        meter = EnergyMeter(gpus)
        monitor = timeline.TimelineMonitor(gpus)
        exclusivity = checks.check_run_gpus(gpus, plan.config.require_exclusive_gpus)
        # Before the hooks go in, with nothing running on the run's GPUs.
        idle_window = timeline.idle_baseline_window(plan.config.idle_baseline_s, gpus)
        recorder = stages.StageRecorder(pipeline, gpus, plan.inference_steps)
        logger.info("Stage hooks: %s; step-end callback %s", recorder.describe(),
                    "passed to the pipeline" if recorder.accepts_step_callback else "not taken")
        return cls(gpus=gpus, meter=meter, monitor=monitor, exclusivity=exclusivity,
                   idle_window=idle_window, recorder=recorder, compiles=CompileTracker())

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
        # Every sample from the monitor's start: a value holds until the next sample, so the
        # one before a window's start is needed to know the power there.
        blocks = runtime.all_gather_object(self.monitor.block(None, window_end))
        self.monitor.stop()
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
