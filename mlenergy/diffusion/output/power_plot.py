"""The power plot of a run (power_timeline.png): power per GPU over time, the measured
iterations and the stages marked. Drawn from the run's record after results.json is written, or
later from results.json (scripts/plot_timeline.py) where the GPU host had no matplotlib."""

from __future__ import annotations

import logging
from pathlib import Path

from mlenergy.diffusion.probes import timeline as timeline_samples

logger = logging.getLogger("mlenergy.diffusion")

PLOT = "power_timeline.png"
STAGE_COLOURS = {"text_encoding": "tab:green", "denoising": "tab:blue", "decoding": "tab:orange"}


def plot_run(record, path: Path) -> Path | None:
    """The power plot of a run's record (timeline, iteration windows, stage boundaries); None
    when the run has no power timeline or matplotlib is missing."""
    timeline = record.observations.timeline
    if not timeline.sampled:
        return None
    iterations = [r.window for r in record.iterations if r.window]
    stages = [tuple(b) for r in record.iterations if r.stages for b in r.stages.stage_boundaries]
    plan = record.plan
    title = (f"{plan.spec.model_id} [{plan.weights}], batch {plan.batch_size}, "
             f"{plan.height}x{plan.width}, {plan.inference_steps} steps, "
             f"{record.gpu_model} x{record.num_gpus}")
    try:
        return plot_power(timeline.to_results(), iterations, stages, path, title=title)
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

    found = timeline_samples.power_series(timeline)
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
