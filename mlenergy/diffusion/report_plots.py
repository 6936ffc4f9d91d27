"""The report's plots: per model and workload on one device, weights kind and dtype, so that no
frontier or scaling line is drawn through different hardware; error bars are the 95% confidence
intervals of the means the results carry. A plot with a single point is not drawn."""

from __future__ import annotations

from mlenergy.diffusion.task import TASKS

import math
import re
from pathlib import Path

# One plot group: a model's workload (size, steps) on one device, weights kind and dtype.
GROUP_KEYS = ["task", "model_id", "device", "weights", "dtype", "height", "width", "num_frames",
              "inference_steps"]


def pareto_frontier(latency: list[float], energy: list[float]) -> list[int]:
    """Indices of the points no other point beats on both latency and energy, by latency."""
    order = sorted(range(len(latency)), key=lambda i: (latency[i], energy[i]))
    frontier, best = [], math.inf
    for i in order:
        if energy[i] < best:
            frontier.append(i)
            best = energy[i]
    return frontier


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-")


def _size(row) -> str:
    size = f"{int(row['height'])}x{int(row['width'])}"
    frames = row.get("num_frames")
    if frames is not None and frames == frames:  # not NaN
        size += f"x{int(frames)}f"
    return size


def group_title(row) -> str:
    return (f"{row['model']} on {row['device']}\n{_size(row)}, {int(row['inference_steps'])} "
            f"steps, {row['weights']} weights, {row['dtype']}")


def group_stem(row) -> str:
    return _slug(f"{row['model']}-{row['device']}-{row['weights']}-{row['dtype']}-{_size(row)}-"
                 f"{int(row['inference_steps'])}steps")


def _errors(values, lows, highs) -> list[list[float]] | None:
    """matplotlib's asymmetric error bars from CI bounds; None when no point has one."""
    below, above = [], []
    for v, lo, hi in zip(values, lows, highs):
        known = lo == lo and hi == hi and lo is not None and hi is not None
        below.append(max(v - lo, 0.0) if known else 0.0)
        above.append(max(hi - v, 0.0) if known else 0.0)
    return [below, above] if any(below) or any(above) else None


def _throughput_bounds(rows) -> tuple[list[float], list[float]]:
    """Throughput = batch / latency: its CI from the latency CI (bounds swap; a lower latency
    bound at or below 0 leaves the upper throughput bound unknown)."""
    lows, highs = [], []
    for _, r in rows.iterrows():
        lo, hi = r["batch_latency_ci95_low_s"], r["batch_latency_ci95_high_s"]
        ok = lo == lo and hi == hi and lo is not None and lo > 0
        lows.append(r["batch_size"] / hi if ok else float("nan"))
        highs.append(r["batch_size"] / lo if ok else float("nan"))
    return lows, highs


def _point_label(row) -> str:
    label = f"b{row['batch_size']} u{row['ulysses_degree']}r{row['ring_degree']}"
    return label + (f" {row['options']}" if row["options"] else "")


def plot_pareto(df, title: str, unit: str, path: Path, plt) -> Path | None:
    measured = df[df["energy_per_output_j"].notna()]
    if len(measured) < 2:
        return None
    lat, energy = measured["batch_latency_s"].tolist(), measured["energy_per_output_j"].tolist()
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.errorbar(lat, energy, fmt="o", color="tab:gray", ms=4, elinewidth=0.8, capsize=2,
                label="runs (95% CI)",
                xerr=_errors(lat, measured["batch_latency_ci95_low_s"].tolist(),
                             measured["batch_latency_ci95_high_s"].tolist()),
                yerr=_errors(energy, measured["energy_per_output_ci95_low_j"].tolist(),
                             measured["energy_per_output_ci95_high_j"].tolist()))
    for (_, row), x, y in zip(measured.iterrows(), lat, energy):
        ax.annotate(_point_label(row), (x, y), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = pareto_frontier(lat, energy)
    ax.plot([lat[i] for i in front], [energy[i] for i in front], "-", color="tab:red",
            label="Pareto frontier")
    ax.set_xlabel("latency per batch (s)")
    ax.set_ylabel(f"energy per {unit} (J)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, plt)


def plot_scaling(df, title: str, unit: str, path: Path, plt) -> Path | None:
    """Energy per output and latency against the GPU (or process) count, per batch and options;
    the line joins the best degrees at each count."""
    counts = df["ulysses_degree"] * df["ring_degree"]
    if counts.nunique() < 2:
        return None
    df = df.assign(count=counts)
    cpu = not df["num_gpus"].any()
    panels = [("batch_latency_s", "latency per batch (s)", "batch_latency_ci95_low_s",
               "batch_latency_ci95_high_s")]
    if df["energy_per_output_j"].notna().any():
        panels.insert(0, ("energy_per_output_j", f"energy per {unit} (J)",
                          "energy_per_output_ci95_low_j", "energy_per_output_ci95_high_j"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (column, ylabel, low, high) in zip(axes[0], panels):
        for (batch, options), group in df.groupby(["batch_size", "options"], sort=True):
            points = group[group[column].notna()].sort_values("count")
            if not len(points):
                continue
            best = points.groupby("count")[column].min()
            line, = ax.plot(best.index, best.values, "-",
                            label=f"batch {batch}" + (f" {options}" if options else ""))
            values = points[column].tolist()
            ax.errorbar(points["count"], values, fmt="o", ms=3, color=line.get_color(),
                        capsize=2, elinewidth=0.8,
                        yerr=_errors(values, points[low].tolist(), points[high].tolist()))
        ax.set_xlabel("processes on CPU (ulysses x ring)" if cpu else "GPUs (ulysses x ring)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(df["count"].unique()))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title + " (line: best degrees at each count)", fontsize=9)
    return _save(fig, path, plt)


def plot_throughput(df, title: str, unit: str, path: Path, plt) -> Path | None:
    if df["batch_size"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for (u, r, options), group in df.groupby(["ulysses_degree", "ring_degree", "options"],
                                             sort=True):
        group = group[group["throughput_per_s"].notna()].sort_values("batch_size")
        values = group["throughput_per_s"].tolist()
        lows, highs = _throughput_bounds(group)
        ax.errorbar(group["batch_size"], values, fmt="o-", ms=4, capsize=2, elinewidth=0.8,
                    yerr=_errors(values, lows, highs),
                    label=f"ulysses {u} x ring {r}" + (f" {options}" if options else ""))
    batches = sorted(df["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{unit}s per second")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(df, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for _, group in df.groupby(GROUP_KEYS, sort=True, dropna=False):
        first = group.iloc[0]
        title, stem = group_title(first), group_stem(first)
        unit = TASKS[first["task"]].noun
        for kind, plot in (("pareto", plot_pareto), ("gpus", plot_scaling),
                           ("throughput", plot_throughput)):
            path = plot(group, title, unit, out_dir / f"{stem}-{kind}.png", plt)
            if path is not None:
                written.append(path)
    return written
