"""Power and temperature over time (GPU only), in the ML.ENERGY `timeline` shape (its plot is
drawn on the results' side: power_plot.py).

Local rank 0 of each node samples its GPUs with Zeus (power every 0.1 s in every domain the
GPU offers, temperature every 0.5 s) from before the idle baseline to the end of the run.
Timelines key GPUs by their global index as strings, like the energy windows. On a CPU there is
nothing to sample and no block is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mlenergy.diffusion.probes.protocol import MeasuredPhase
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results import stats
from mlenergy.diffusion.results.sections import Section

logger = logging.getLogger("mlenergy.diffusion")

# Preferred power domain for integrals and the plot: the instantaneous reading, then the
# one-second average.
DOMAINS = ("device_instant", "device_average")


class TimelineMonitor:
    def __init__(self, gpus):
        self._gpus = gpus
        self.ranks = gpus.ranks
        self._monitors = None
        if gpus.ranks.is_local_main and gpus.measures_energy:
            try:
                self._monitors = gpus.access.timeline_monitors()
            except Exception as err:  # noqa: BLE001 - timelines are a cross-check, not the result
                logger.warning("Power/temperature timelines unavailable (%s: %s); the run goes "
                               "on without them", type(err).__name__, err)

    @property
    def active(self) -> bool:
        return self._monitors is not None

    def block(self, start: float | None, end: float) -> dict | None:
        """This node's samples up to `end` (wall time) from `start` (None: from the first), GPU
        keys global. A sample holds its value until the next, and samples come only when the
        value changes: the last one before `start` is kept, for it gives the power there."""
        if self._monitors is None:
            return None
        keyed = self._gpus.keyed
        power = {domain: keyed({g: _from(series, start) for g, series in per_gpu.items()})
                 for domain, per_gpu in self._monitors.power(None, end).items()}
        temperature = keyed({g: _from(series, start)
                             for g, series in self._monitors.temperature(None, end).items()})
        return {"power": power, "temperature": temperature}

    def stop(self) -> None:
        if self._monitors is not None:
            self._monitors.stop()


def _from(series, start: float | None) -> list[list[float]]:
    """[t, value] pairs from the last one at or before `start` (all when None)."""
    pairs = [[t, v] for t, v in series]
    if start is None:
        return pairs
    first = max((i for i, (t, _) in enumerate(pairs) if t <= start), default=0)
    return pairs[first:]


@dataclass
class PowerTimeline(Section):
    """results.json `timeline`: the measured phase's bounds and, where GPUs were sampled, every
    node's power (per domain, per GPU: [time, W] pairs) and temperature samples."""

    benchmark_start_time: float
    benchmark_end_time: float
    power: dict[str, dict[str, list]] | None = None
    temperature: dict[str, list] | None = None

    @property
    def sampled(self) -> bool:
        return bool(self.power)

    def to_results(self) -> dict:
        out = {"benchmark_start_time": self.benchmark_start_time,
               "benchmark_end_time": self.benchmark_end_time}
        if self.power is not None:  # without GPUs only the bounds are written
            out.update(power=self.power, temperature=self.temperature)
        return out


@dataclass
class IdleBaseline(Section):
    """results.json `idle_baseline`: the GPUs' mean power over the idle window."""

    start_time: float
    end_time: float
    duration_s: float
    mean_power_w: dict[str, float] | None
    total_power_w: float | None


class TimelineProbe:
    """One point's share of the process's power and temperature timeline."""

    def __init__(self, monitor: TimelineMonitor, since: float | None):
        self.monitor = monitor
        # Where the point's timeline begins: None (the monitor's start, idle window included)
        # for a process's first point, as a point launched alone has it; the point's own start
        # for later ones.
        self.since = since

    def begin_iteration(self, measured: bool) -> None:
        pass

    def end_iteration(self, measured: bool) -> None:
        pass

    def gather(self, phase: MeasuredPhase) -> PowerTimeline | None:
        # Every sample from well before the first window (the point's start): a value holds
        # until the next sample, so the one before a window's start is needed to know the power
        # there. The monitor goes on for the process's next point.
        blocks = runtime.all_gather_object(self.monitor.block(self.since, phase.window[1]))
        if not self.monitor.ranks.is_main:
            return None
        merged = merge_blocks(blocks, *phase.window)
        return PowerTimeline(**merged) if merged else PowerTimeline(*phase.window)


def idle_baseline_window(seconds: float, gpus) -> tuple[float, float] | None:
    """Every rank sleeps the same time (a barrier would keep the GPUs spinning in NCCL) while
    local rank 0's monitor samples the idle GPUs. Nothing to sample without GPUs."""
    if seconds <= 0 or not gpus.measures_energy:
        return None
    gpus.fence()
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    runtime.barrier()
    return start, end


def merge_blocks(blocks: list[dict | None], start: float, end: float) -> dict | None:
    """The ML.ENERGY block from every node's samples; None when no node sampled anything."""
    blocks = [b for b in blocks if b]
    if not blocks:
        return None
    power: dict[str, dict] = {}
    temperature: dict[str, list] = {}
    for block in blocks:
        for domain, per_gpu in block["power"].items():
            power.setdefault(domain, {}).update(per_gpu)
        temperature.update(block["temperature"])
    return {"benchmark_start_time": start, "benchmark_end_time": end, "power": power,
            "temperature": temperature}


def idle_baseline(block: dict | None, start: float, end: float) -> IdleBaseline:
    power = mean_power(block, start, end) if block else None
    return IdleBaseline(start_time=start, end_time=end, duration_s=end - start,
                        mean_power_w=power, total_power_w=sum(power.values()) if power else None)


def power_series(timeline: dict) -> tuple[str, dict[str, list]] | None:
    """The preferred power domain present in the block, and its per-GPU series."""
    for domain in DOMAINS:
        if timeline["power"].get(domain):
            return domain, timeline["power"][domain]
    return None


def energy_between(timeline: dict, start: float, end: float) -> dict[str, float] | None:
    """Per-GPU joules by integrating the power samples over [start, end]; None when a GPU has
    too few samples there."""
    found = power_series(timeline)
    if found is None:
        return None
    energy = {}
    for gpu, series in found[1].items():
        joules = stats.held_integral([tuple(p) for p in series], start, end)
        if joules is None:
            return None
        energy[gpu] = joules
    return energy


def mean_power(timeline: dict, start: float, end: float) -> dict[str, float] | None:
    energy = energy_between(timeline, start, end)
    if energy is None or end <= start:
        return None
    return {gpu: j / (end - start) for gpu, j in energy.items()}
