"""The report's plots: per model and workload on one device, weights kind and dtype, so that no
frontier or scaling line is drawn through different hardware. Drawn so that they cannot mislead:

- one series per configuration and campaign (a line never joins runs of two campaigns);
- every point labelled with what sets it apart in its plot;
- points measured while another run shared the node, and unsteady points (CV above the limit),
  marked as such, with a legend entry;
- error bars are the 95% confidence intervals of the means, clipped at zero (no time or energy
  is negative);
- every axis starts at zero.

A plot with a single point is not drawn."""

from __future__ import annotations

import math
import re
from pathlib import Path

from mlenergy.diffusion.inputs.task import TASKS

# One plot group: a model's workload (size, steps) on one device, weights kind and dtype.
GROUP_KEYS = ["task", "model_id", "device", "weights", "dtype", "height", "width", "num_frames",
              "inference_steps"]
SHARED_STYLE = dict(marker="s", s=150, facecolors="none", edgecolors="black",
                    linewidths=1.5, zorder=4)
UNSTEADY_STYLE = dict(marker="x", s=90, color="tab:red", linewidths=1.5, zorder=5)
SHARED_LABEL = "shared its node with another run"
UNSTEADY_LABEL = "not steady (CV above 5%)"


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


def _known(value) -> bool:
    return value is not None and value == value  # not None, not NaN


def _errors(values, lows, highs) -> list[list[float]] | None:
    """matplotlib's asymmetric error bars from CI bounds, the lower bound clipped at zero; None
    when no point has one."""
    below, above = [], []
    for v, lo, hi in zip(values, lows, highs):
        known = _known(lo) and _known(hi)
        below.append(max(v - max(lo, 0.0), 0.0) if known else 0.0)
        above.append(max(hi - v, 0.0) if known else 0.0)
    return [below, above] if any(below) or any(above) else None


def _throughput_bounds(rows) -> tuple[list[float], list[float]]:
    """Throughput = batch / latency: its CI from the latency CI (bounds swap; a lower latency
    bound at or below 0 leaves the upper throughput bound unknown)."""
    lows, highs = [], []
    for _, r in rows.iterrows():
        lo, hi = r["batch_latency_ci95_low_s"], r["batch_latency_ci95_high_s"]
        ok = _known(lo) and _known(hi) and lo > 0
        lows.append(r["batch_size"] / hi if ok else float("nan"))
        highs.append(r["batch_size"] / lo if ok else float("nan"))
    return lows, highs


def shared_node(row) -> bool:
    count = row.get("shared_node_runs")
    return _known(count) and count > 0


def unsteady(row) -> bool:
    return row.get("steady") is False or row.get("steady") == 0.0


def _caveats(row) -> str:
    notes = [note for flag, note in ((shared_node(row), "shared"), (unsteady(row), "unsteady"))
             if flag]
    return f" [{', '.join(notes)}]" if notes else ""


def _degrees(row) -> str:
    return f"u{row['ulysses_degree']}r{row['ring_degree']}"


def _point_label(row) -> str:
    label = f"b{row['batch_size']} {_degrees(row)}"
    return label + (f" {row['options']}" if row["options"] else "")


def _campaign_prefix(df, campaign) -> str:
    return f"{campaign}: " if "campaign" in df and df["campaign"].nunique() > 1 else ""


def _campaign_suffix(df, campaign) -> str:
    """The campaign in a series' name, where the plot holds more than one."""
    return f" ({campaign})" if "campaign" in df and df["campaign"].nunique() > 1 else ""


def _label_points(ax, rows, xs, ys, text, color=None) -> None:
    """Every point gets its label in its series' colour (placed by `_finish_axes`, apart from
    its neighbours' labels), with its caveats, and its caveat markers."""
    pending = ax.__dict__.setdefault("_point_labels", [])
    for (_, row), x, y in zip(rows.iterrows(), xs, ys):
        pending.append((x, y, text(row) + _caveats(row), color))
        if shared_node(row):
            ax.scatter([x], [y], **SHARED_STYLE)
        if unsteady(row):
            ax.scatter([x], [y], **UNSTEADY_STYLE)


def _place_labels(ax, gap_pt: float = 9.0) -> None:
    """Annotate the pending labels beside their points; labels of points at about the same place
    stack upwards instead of printing over one another."""
    pending = ax.__dict__.pop("_point_labels", [])
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float]] = []  # (x, y) of label baselines, in points
    for x, y, text, color in sorted(pending, key=lambda item: (item[0], item[1])):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        offset = 4.0
        while any(abs(px - qx) < 60 and abs(py + offset - qy) < gap_pt for qx, qy in placed):
            offset += gap_pt
        placed.append((px, py + offset))
        # A label moved off its point keeps a thin line to it.
        leader = dict(arrowstyle="-", lw=0.4, color="gray") if offset > 4.0 else None
        ax.annotate(text, (x, y), fontsize=7, xytext=(8, offset), textcoords="offset points",
                    color=color or "black", arrowprops=leader)


def _finish_axes(ax, df, x_from_zero: bool = True) -> None:
    """Axes from zero, every point's label, and the caveat markers in the legend where any point
    has one."""
    # From zero, with room at the top and right for the labels of the outermost points.
    ax.set_ylim(0, max(ax.get_ylim()[1] * 1.1, 1e-12))
    if x_from_zero:
        ax.set_xlim(0, max(ax.get_xlim()[1] * 1.12, 1e-12))
    _place_labels(ax)
    handles, labels = ax.get_legend_handles_labels()
    rows = [row for _, row in df.iterrows()]
    if any(shared_node(r) for r in rows):
        handles.append(ax.scatter([], [], **SHARED_STYLE))
        labels.append(SHARED_LABEL)
    if any(unsteady(r) for r in rows):
        handles.append(ax.scatter([], [], **UNSTEADY_STYLE))
        labels.append(UNSTEADY_LABEL)
    if handles:  # below the axes: never over a point, a bar or a label
        ax.legend(handles, labels, fontsize=7, loc="upper center", ncol=2,
                  bbox_to_anchor=(0.5, -0.14))


def _campaigns(df):
    return df.groupby("campaign", sort=True) if "campaign" in df else [("", df)]


def plot_pareto(df, title: str, unit: str, path: Path, plt) -> Path | None:
    measured = df[df["energy_per_output_j"].notna()]
    if len(measured) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for campaign, runs in _campaigns(measured):
        lat, energy = runs["batch_latency_s"].tolist(), runs["energy_per_output_j"].tolist()
        bars = ax.errorbar(
            lat, energy, fmt="o", ms=4, elinewidth=0.8, capsize=2,
            label=_campaign_prefix(measured, campaign) + "runs (95% CI)",
            xerr=_errors(lat, runs["batch_latency_ci95_low_s"].tolist(),
                         runs["batch_latency_ci95_high_s"].tolist()),
            yerr=_errors(energy, runs["energy_per_output_ci95_low_j"].tolist(),
                         runs["energy_per_output_ci95_high_j"].tolist()))
        _label_points(ax, runs, lat, energy, _point_label, bars.lines[0].get_color())
    lat, energy = measured["batch_latency_s"].tolist(), measured["energy_per_output_j"].tolist()
    front = pareto_frontier(lat, energy)
    ax.plot([lat[i] for i in front], [energy[i] for i in front], "-", color="tab:red",
            label="Pareto frontier", zorder=1)
    ax.set_xlabel("latency per batch (s)")
    ax.set_ylabel(f"energy per {unit} (J)")
    ax.set_title(title, fontsize=9)
    _finish_axes(ax, measured)
    return _save(fig, path, plt)


def _scaling_panel(ax, df, column: str, low: str, high: str) -> None:
    """One series per (batch, options, campaign): its points at each count, and a line through
    the best degrees at each count."""
    for (batch, options, campaign), group in df.groupby(["batch_size", "options", "campaign"],
                                                        sort=True):
        points = group[group[column].notna()].sort_values("count")
        if not len(points):
            continue
        best = points.groupby("count")[column].min()
        line, = ax.plot(best.index, best.values, "-",
                        label=f"batch {batch}" + (f" {options}" if options else "")
                        + _campaign_suffix(df, campaign))
        values = points[column].tolist()
        ax.errorbar(points["count"], values, fmt="o", ms=3, color=line.get_color(),
                    capsize=2, elinewidth=0.8,
                    yerr=_errors(values, points[low].tolist(), points[high].tolist()))
        _label_points(ax, points, points["count"].tolist(), values, _degrees, line.get_color())


def plot_scaling(df, title: str, unit: str, path: Path, plt) -> Path | None:
    """Energy per output and latency against the GPU (or process) count, per batch, options
    and campaign; the line joins the best degrees at each count."""
    counts = df["ulysses_degree"] * df["ring_degree"]
    if counts.nunique() < 2:
        return None
    df = df.assign(count=counts, campaign=df["campaign"] if "campaign" in df else "")
    cpu = not df["num_gpus"].any()
    panels = [("batch_latency_s", "latency per batch (s)", "batch_latency_ci95_low_s",
               "batch_latency_ci95_high_s")]
    if df["energy_per_output_j"].notna().any():
        panels.insert(0, ("energy_per_output_j", f"energy per {unit} (J)",
                          "energy_per_output_ci95_low_j", "energy_per_output_ci95_high_j"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (column, ylabel, low, high) in zip(axes[0], panels):
        _scaling_panel(ax, df, column, low, high)
        ax.set_xlabel("processes on CPU (ulysses x ring)" if cpu else "GPUs (ulysses x ring)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(df["count"].unique()))
        _finish_axes(ax, df[df[column].notna()])
    fig.suptitle(title + " (line: best degrees at each count)", fontsize=9)
    return _save(fig, path, plt)


def plot_throughput(df, title: str, unit: str, path: Path, plt) -> Path | None:
    if df["batch_size"].nunique() < 2:
        return None
    df = df.assign(campaign=df["campaign"] if "campaign" in df else "")
    fig, ax = plt.subplots(figsize=(7, 5))
    for (u, r, options, campaign), group in df.groupby(
            ["ulysses_degree", "ring_degree", "options", "campaign"], sort=True):
        group = group[group["throughput_per_s"].notna()].sort_values("batch_size")
        values = group["throughput_per_s"].tolist()
        lows, highs = _throughput_bounds(group)
        bars = ax.errorbar(group["batch_size"], values, fmt="o-", ms=4, capsize=2,
                           elinewidth=0.8, yerr=_errors(values, lows, highs),
                           label=f"ulysses {u} x ring {r}" + (f" {options}" if options else "")
                           + _campaign_suffix(df, campaign))
        _label_points(ax, group, group["batch_size"].tolist(), values,
                      lambda row: f"b{row['batch_size']} {_degrees(row)}",
                      bars.lines[0].get_color())
    batches = sorted(df["batch_size"].unique())
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{unit}s per second")
    ax.set_title(title, fontsize=9)
    _finish_axes(ax, df)
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
