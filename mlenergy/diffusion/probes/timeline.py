"""Power and temperature over time (GPU only), in the ML.ENERGY `timeline` shape, and its plot.

Local rank 0 of each node samples its GPUs with Zeus (power every 0.1 s in every domain the
GPU offers, temperature every 0.5 s) from before the idle baseline to the end of the run.
Timelines key GPUs by their global index as strings, like the energy windows. On a CPU there is
nothing to sample and no block is written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mlenergy.diffusion import runtime, stats

logger = logging.getLogger("mlenergy.diffusion")

PLOT = "power_timeline.png"
# Preferred power domain for integrals and the plot: the instantaneous reading, then the
# one-second average.
DOMAINS = ("device_instant", "device_average")


class TimelineMonitor:
    def __init__(self, gpus):
        self._gpus = gpus
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


def idle_baseline(block: dict | None, start: float, end: float) -> dict:
    """results.json `idle_baseline`: the GPUs' mean power over the idle window."""
    power = mean_power(block, start, end) if block else None
    return {"start_time": start, "end_time": end, "duration_s": end - start,
            "mean_power_w": power,
            "total_power_w": sum(power.values()) if power else None}


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


STAGE_COLOURS = {"text_encoding": "tab:green", "denoising": "tab:blue", "decoding": "tab:orange"}


def plot_run(record, path: Path) -> Path | None:
    """The power plot of a run's record (timeline, iteration windows, stage boundaries); None
    when the run has no power timeline or matplotlib is missing."""
    block = record.observations.timeline or {}
    if not block.get("power"):
        return None
    iterations = [r.window for r in record.iterations if r.window]
    stages = [tuple(b) for r in record.iterations if r.stages for b in r.stages["boundaries"]]
    plan = record.plan
    title = (f"{plan.spec.model_id} [{plan.weights}], batch {plan.batch_size}, "
             f"{plan.height}x{plan.width}, {plan.inference_steps} steps, "
             f"{record.gpu_model} x{record.num_gpus}")
    try:
        return plot_power(block, iterations, stages, path, title=title)
    except ImportError:
        logger.warning("matplotlib is not installed: no power plot (pip install matplotlib, then "
                       "python scripts/plot_timeline.py RUN_DIR)")
        return None


def plot_power(timeline: dict, iterations: list[tuple[float, float]],
               stages: list[tuple[str, float, float]], path: Path, title: str = "") -> Path:
    """Power over time per GPU, measured iterations as vertical lines and stages as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = power_series(timeline)
    if found is None:
        raise ValueError("the timeline has no power samples to plot")
    domain, per_gpu = found
    origin = min(series[0][0] for series in per_gpu.values() if series)
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=120)
    for gpu, series in sorted(per_gpu.items(), key=lambda kv: int(kv[0])):
        if series:
            # Samples come only when the value changes: each holds until the next.
            ax.plot([t - origin for t, _ in series], [w for _, w in series], lw=0.9,
                    drawstyle="steps-post", label=f"GPU {gpu}")
    shown = set()
    for name, start, end in stages:
        ax.axvspan(start - origin, end - origin, color=STAGE_COLOURS.get(name, "grey"),
                   alpha=0.15, lw=0, label=None if name in shown else name.replace("_", " "))
        shown.add(name)
    for i, (start, end) in enumerate(iterations):
        ax.axvline(start - origin, color="black", lw=0.7, ls="--",
                   label="iteration start/end" if i == 0 else None)
        ax.axvline(end - origin, color="black", lw=0.7, ls="--")
    ax.set_xlabel("time since first sample (s)")
    ax.set_ylabel(f"power, {domain} (W)")
    ax.set_ylim(0, max(ax.get_ylim()[1] * 1.05, 1.0))  # from zero: a flat line reads as flat
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
