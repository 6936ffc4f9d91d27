"""One table of every run under a tree, a markdown summary, and plots.

    python -m mlenergy.diffusion.report RUN_DIR [--out_dir DIR] [--no_plots]

Reads every results.json under RUN_DIR (a sweep's `run/` tree, or any part of it) and writes
runs.csv, runs.parquet, report.md and, per model, PNG plots into DIR (default RUN_DIR/report).
Latency, throughput, energy and power are recomputed from the per-iteration windows with the
formulas of the ML.ENERGY data toolkit (`mlenergy-data`), so the numbers are the toolkit's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

from mlenergy.diffusion.config import DEFAULT_CACHE_THRESHOLD
from mlenergy.diffusion.files import RESULTS
STAGES = ("text_encoding", "denoising", "decoding", "remainder")
STAGE_SHORT = {"text_encoding": "text", "denoising": "denoise", "decoding": "decode",
               "remainder": "rest"}
OPTION_NAMES = {"use_torch_compile": "compile", "use_teacache": "teacache",
                "use_fbcache": "fbcache", "use_fp8_t5_encoder": "fp8-t5",
                "enable_sequential_cpu_offload": "cpu-offload"}


class ReportError(ValueError):
    """Bad report input: one line that says what is wrong and how to fix it."""


def find_results(root: Path) -> list[Path]:
    found = []
    # followlinks: the toolkit's layout reaches runs through a `current/run` symlink.
    for dirpath, _, filenames in os.walk(root, followlinks=True):
        if RESULTS in filenames:
            found.append(Path(dirpath) / RESULTS)
    return sorted(found)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _task(doc: dict, path: Path) -> str:
    if doc.get("task"):
        return doc["task"]
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "diffusion" and parts[i + 1].startswith("text-to-"):
            return parts[i + 1]
    return "text-to-video" if doc.get("num_frames") is not None else "text-to-image"


def _settings(configurations: dict, key: str) -> list[str]:
    """The settings that qualify an option when they are off their defaults (runs that differ in
    them must not share a label)."""
    c = configurations
    if key == "use_torch_compile":
        return [str(v) for v, default in ((c.get("compile_scope"), "transformer"),
                                          (c.get("compile_mode"), "default"),
                                          (c.get("compile_backend"), "inductor"))
                if v not in (None, default)]
    if key in ("use_teacache", "use_fbcache"):
        threshold = c.get("cache_threshold")
        return [] if threshold in (None, DEFAULT_CACHE_THRESHOLD) else [f"{threshold:g}"]
    return []


def options_label(configurations: dict) -> str:
    """The performance options a run had on, short, with their non-default settings:
    `compile(blocks)+fbcache(1)+attn-cudnn`; '' for none."""
    on = []
    for key, value in configurations.items():
        if value is True and (key in OPTION_NAMES or key.startswith(("use_", "enable_"))):
            settings = _settings(configurations, key)
            on.append(OPTION_NAMES.get(key, key)
                      + (f"({','.join(settings)})" if settings else ""))
    if configurations.get("attention_backend"):
        on.append(f"attn-{configurations['attention_backend']}")
    return "+".join(on)


def iteration_metrics(doc: dict, batch_size: int) -> dict:
    """Batch latency, throughput, energy per output and power, as `mlenergy-data` computes
    them from `iteration_energy_measurements`: means over iterations with a positive time and a
    per-GPU energy dict. Runs without energy get time-only numbers and None for energy."""
    energies, times = [], []
    for window in doc.get("iteration_energy_measurements") or []:
        gpu = window.get("gpu_energy")
        t = _number(window.get("time"))
        if not isinstance(gpu, dict) or t is None or t <= 0:
            continue
        energies.append(float(sum(float(j) for j in gpu.values())))
        times.append(t)
    if energies:
        latency = statistics.fmean(times)
        energy = statistics.fmean(energies)
        return {"batch_latency_s": latency, "throughput_per_s": batch_size / latency,
                "energy_per_output_j": energy / batch_size, "avg_power_w": energy / latency}
    times = [t for t in (_number(it.get("time")) for it in doc.get("iterations") or [])
             if t is not None and t > 0]
    latency = (statistics.fmean(times) if times
               else _number((doc.get("latency_per_iteration") or {}).get("mean")))
    return {"batch_latency_s": latency,
            "throughput_per_s": batch_size / latency if latency else None,
            "energy_per_output_j": None, "avg_power_w": None}


def run_row(path: Path) -> dict:
    doc = json.loads(path.read_text())
    config = doc.get("configurations") or {}
    u = int(doc.get("ulysses_degree") or config.get("ulysses_degree") or 1)
    r = int(doc.get("ring_degree") or config.get("ring_degree") or 1)
    batch = int(doc["batch_size"])
    task = _task(doc, path)
    row = {
        "model_id": doc.get("model_id"),
        "model": str(doc.get("model_id", "")).rstrip("/").split("/")[-1],
        "task": task,
        "output": "video" if task == "text-to-video" else "image",
        "gpu_model": doc.get("gpu_model"),
        "num_gpus": int(doc["num_gpus"]) if doc.get("num_gpus") is not None else u * r,
        "num_processes": int(doc.get("num_processes") or u * r),
        "ulysses_degree": u,
        "ring_degree": r,
        "batch_size": batch,
        "height": doc.get("height"),
        "width": doc.get("width"),
        "num_frames": doc.get("num_frames"),
        "fps": doc.get("fps"),
        "inference_steps": doc.get("inference_steps"),
        "weights": doc.get("weights"),
        "dtype": doc.get("dtype"),
        "options": options_label(config),
        "use_torch_compile": bool(config.get("use_torch_compile", False)),
        "energy_measured": bool(doc.get("iteration_energy_measurements")),
        "num_iterations": doc.get("num_iterations"),
        **iteration_metrics(doc, batch),
        "peak_memory_gb": _number(doc.get("peak_memory_gb")),
        "date": doc.get("date"),
        "run_dir": str(path.parent),
    }
    row["time_per_output_s"] = (row["batch_latency_s"] / batch
                                if row["batch_latency_s"] is not None else None)
    breakdown = doc.get("stage_breakdown")
    if isinstance(breakdown, dict):
        for stage in STAGES:
            part = breakdown.get(stage) or {}
            row[f"stage_{stage}_time_s"] = _number(part.get("time_s"))
            row[f"stage_{stage}_energy_j"] = _number(part.get("energy_j"))
    return row


def load_table(root: Path):
    import pandas as pd

    paths = find_results(root)
    if not paths:
        raise ReportError(f"no {RESULTS} under {root}; point the report at a run tree "
                          "(e.g. run/ after a sweep)")
    rows = []
    for path in paths:
        try:
            rows.append(run_row(path))
        except (ValueError, KeyError, TypeError) as err:
            print(f"warning: {path} skipped: {type(err).__name__}: {err}", file=sys.stderr)
    df = pd.DataFrame(rows)
    return df.sort_values(["task", "model_id", "num_gpus", "ulysses_degree", "ring_degree",
                           "batch_size", "options"], kind="stable").reset_index(drop=True)


def pareto_frontier(latency: list[float], energy: list[float]) -> list[int]:
    """Indices of the points no other point beats on both latency and energy, by latency."""
    order = sorted(range(len(latency)), key=lambda i: (latency[i], energy[i]))
    frontier, best = [], math.inf
    for i in order:
        if energy[i] < best:
            frontier.append(i)
            best = energy[i]
    return frontier


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _stages_text(row) -> str:
    parts = []
    for stage in STAGES:
        t = row.get(f"stage_{stage}_time_s")
        if t is not None and not (isinstance(t, float) and math.isnan(t)):
            parts.append(f"{STAGE_SHORT[stage]} {t:.3g}")
    return " / ".join(parts) or "-"


def markdown(df) -> str:
    has_stages = any(c.startswith("stage_") for c in df.columns)
    out = [f"# Benchmark report: {len(df)} run(s)", ""]
    for task, group in df.groupby("task", sort=True):
        unit = "video" if task == "text-to-video" else "image"
        out += [f"## {task}", ""]
        header = ["model", "device", "GPUs", "U x R", "batch", "size", "steps", "options",
                  "latency / batch (s)", f"{unit}s / s", f"J / {unit}", "power (W)",
                  "peak mem (GB)"]
        if has_stages:
            header.append("stages (s / batch)")
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in group.iterrows():
            row = row.where(row.notna(), None)
            size = f"{row['height']}x{row['width']}"
            if row.get("num_frames"):
                size += f"x{int(row['num_frames'])}f"
            cells = [
                row["model"], row["gpu_model"] or "-",
                str(row["num_gpus"]) if row["num_gpus"] else f"0 (CPU, {row['num_processes']} proc)",
                f"{row['ulysses_degree']} x {row['ring_degree']}", str(row["batch_size"]), size,
                str(row["inference_steps"]), row["options"] or "-",
                _fmt(row["batch_latency_s"], ".3f"), _fmt(row["throughput_per_s"], ".3f"),
                _fmt(row["energy_per_output_j"], ",.1f"), _fmt(row["avg_power_w"], ",.1f"),
                _fmt(row["peak_memory_gb"], ".2f"),
            ]
            if has_stages:
                cells.append(_stages_text(row))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _variant(row) -> str:
    """What besides degrees and batch size sets a run apart: size, steps, options."""
    parts = [f"{row['height']}x{row['width']}", f"{row['inference_steps']} steps"]
    if row["options"]:
        parts.append(row["options"])
    return ", ".join(parts)


def plot_model(df, out_dir: Path) -> list[Path]:
    """Pareto (latency vs energy per output), scaling with GPU count, throughput vs batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, task = df["model"].iloc[0], df["task"].iloc[0]
    unit = "video" if task == "text-to-video" else "image"
    df = df.assign(variant=df.apply(_variant, axis=1), degrees=df["ulysses_degree"] * df["ring_degree"])
    many_variants = df["variant"].nunique() > 1
    measured = df[df["energy_per_output_j"].notna()]
    written = []

    if len(measured):
        fig, ax = plt.subplots(figsize=(7, 5))
        lat, energy = measured["batch_latency_s"].tolist(), measured["energy_per_output_j"].tolist()
        ax.scatter(lat, energy, c="tab:gray", s=25, label="runs")
        for (_, row), x, y in zip(measured.iterrows(), lat, energy):
            ax.annotate(f"b{row['batch_size']} u{row['ulysses_degree']}r{row['ring_degree']}",
                        (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_frontier(lat, energy)
        ax.plot([lat[i] for i in front], [energy[i] for i in front], "o-", color="tab:red",
                label="Pareto frontier")
        ax.set_xlabel("latency per batch (s)")
        ax.set_ylabel(f"energy per {unit} (J)")
        ax.set_title(f"{model}: latency vs energy per {unit}")
        ax.legend()
        written.append(_save(fig, out_dir / f"{_slug(model)}-pareto.png"))

    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (batch, variant), group in df.groupby(["batch_size", "variant"], sort=True):
        label = f"batch {batch}" + (f" ({variant})" if many_variants else "")
        for ax, column in ((ax_e, "energy_per_output_j"), (ax_t, "batch_latency_s")):
            points = group[group[column].notna()]
            if not len(points):
                continue
            best = points.groupby("degrees")[column].min()
            line, = ax.plot(best.index, best.values, "-", label=label)
            ax.scatter(points["degrees"], points[column], color=line.get_color(), s=18)
            for _, row in points.iterrows():
                ax.annotate(f"{row['ulysses_degree']}x{row['ring_degree']}",
                            (row["degrees"], row[column]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    ax_e.set_ylabel(f"energy per {unit} (J)")
    ax_t.set_ylabel("latency per batch (s)")
    if not len(measured):
        ax_e.text(0.5, 0.5, "energy not measured", ha="center", va="center",
                  transform=ax_e.transAxes)
    for ax in (ax_e, ax_t):
        ax.set_xlabel("GPUs (ulysses x ring)")
        ax.set_xticks(sorted(df["degrees"].unique()))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{model}: scaling with GPU count (line: best degrees at each count)")
    written.append(_save(fig, out_dir / f"{_slug(model)}-gpus.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for (u, r, variant), group in df.groupby(["ulysses_degree", "ring_degree", "variant"],
                                             sort=True):
        group = group[group["throughput_per_s"].notna()].sort_values("batch_size")
        label = f"ulysses {u} x ring {r}" + (f" ({variant})" if many_variants else "")
        ax.plot(group["batch_size"], group["throughput_per_s"], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(df["batch_size"].unique()), [str(b) for b in sorted(df["batch_size"].unique())])
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{unit}s per second")
    ax.set_title(f"{model}: throughput vs batch size")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / f"{_slug(model)}-throughput.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(root: Path, out_dir: Path, plots: bool = True) -> dict:
    df = load_table(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "runs.csv", "parquet": out_dir / "runs.parquet",
             "markdown": out_dir / "report.md"}
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"], index=False)
    text = markdown(df)
    paths["markdown"].write_text(text + "\n")
    written_plots = []
    if plots:
        for _, group in df.groupby(["task", "model_id"], sort=True):
            written_plots += plot_model(group, out_dir)
    return {"table": df, "markdown": text, "paths": paths, "plots": written_plots}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlenergy.diffusion.report",
                                description="Aggregate every results.json under a run tree "
                                            "into one table, a markdown summary and plots.")
    p.add_argument("run_dir", type=Path, help="a run tree, e.g. run/ after a sweep")
    p.add_argument("--out_dir", type=Path,
                   help="where runs.csv, runs.parquet, report.md and the plots go "
                        "(default: RUN_DIR/report)")
    p.add_argument("--no_plots", action="store_true", help="write the table only")
    ns = p.parse_args(argv)
    if not ns.run_dir.is_dir():
        print(f"error: {ns.run_dir} is not a directory; pass the run tree (e.g. run/)",
              file=sys.stderr)
        return 2
    try:
        report = write_report(ns.run_dir, ns.out_dir or ns.run_dir / "report", not ns.no_plots)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report["markdown"])
    for kind, path in report["paths"].items():
        print(f"{kind}: {path}")
    for path in report["plots"]:
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
