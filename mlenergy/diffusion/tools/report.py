"""One table of every run under a tree, a markdown summary, and plots.

    python -m mlenergy.diffusion.tools.report RUN_DIR [--out_dir DIR] [--no_plots]

Reads every results.json under RUN_DIR (a sweep's `run/` tree, or any part of it) and writes
runs.csv, runs.parquet, report.md and PNG plots into DIR (default RUN_DIR/report). Latency,
throughput, energy and power are recomputed from the per-iteration windows with the formulas of
the ML.ENERGY data toolkit (`mlenergy-data`), so the numbers are the toolkit's. Runs are never
mixed across hardware: tables and plots are grouped by GPU model (or CPU), weights and dtype.
A file that is not a results.json of this benchmark is skipped with a warning.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from pathlib import Path
from typing import Annotated, Optional

import tyro

from mlenergy.diffusion.inputs.argcheck import parse_one_line
from mlenergy.diffusion.inputs.config import help_from_docstrings, one_paragraph
from mlenergy.diffusion.inputs.task import TASKS
from mlenergy.diffusion.planning.options import at_default
from mlenergy.diffusion.results.files import RESULTS
from mlenergy.diffusion.results.results_reader import ResultsError, RunResults, find_results
from mlenergy.diffusion.results.results_sections import StageTotals, Summary

PROG = "mlenergy-diffusion report"
# What `report` needs beyond the benchmark's own dependencies.
INSTALL_HINT = "pip install -e '.[report]'"

STAGES = ("text_encoding", "denoising", "decoding", "remainder")
STAGE_SHORT = {"text_encoding": "text", "denoising": "denoise", "decoding": "decode",
               "remainder": "rest"}
# The settings that qualify --use_torch_compile in a label, in the label's order.
COMPILE_SETTINGS = ("compile_scope", "compile_mode", "compile_backend", "compile_autotune")
OPTION_NAMES = {"use_torch_compile": "compile", "use_teacache": "teacache",
                "use_fbcache": "fbcache", "use_fp8_t5_encoder": "fp8-t5",
                "enable_sequential_cpu_offload": "cpu-offload"}
# What sets runs apart so much that they never share a table or a plot.
HARDWARE_KEYS = ["task", "device", "weights", "dtype"]


class ReportError(ValueError):
    """Bad report input: one line that says what is wrong and how to fix it."""


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _settings(configurations: dict, key: str) -> list[str]:
    """The settings that qualify an option when they are off their defaults (runs that differ in
    them must not share a label); the defaults are the options' own (`options.at_default`)."""
    c = configurations
    if key == "use_torch_compile":
        return ["autotune" if name == "compile_autotune" else str(c.get(name))
                for name in COMPILE_SETTINGS if not at_default(name, c.get(name))]
    if key in ("use_teacache", "use_fbcache"):
        threshold = c.get("cache_threshold")
        return [] if at_default("cache_threshold", threshold) else [f"{threshold:g}"]
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


def iteration_metrics(stored: RunResults) -> dict:
    """Batch latency, throughput, energy per output and power, as `mlenergy-data` computes
    them from `iteration_energy_measurements`: means over iterations with a positive time and a
    per-GPU energy dict. Runs without energy get time-only numbers and None for energy."""
    batch_size = stored.batch_size
    energies, times = [], []
    for window in stored.energy_windows:
        t = _number(window.time)
        if not isinstance(window.gpu_energy, dict) or t is None or t <= 0:
            continue
        energies.append(float(sum(float(j) for j in window.gpu_energy.values())))
        times.append(t)
    if energies:
        latency = statistics.fmean(times)
        energy = statistics.fmean(energies)
        return {"batch_latency_s": latency, "throughput_per_s": batch_size / latency,
                "energy_per_output_j": energy / batch_size, "avg_power_w": energy / latency}
    times = [it.time for it in stored.iterations if it.time is not None and it.time > 0]
    summary = stored.latency_per_iteration
    latency = (statistics.fmean(times) if times
               else _number(summary.mean) if summary is not None else None)
    if latency is None or latency <= 0:
        raise ResultsError("no positive iteration time")
    return {"batch_latency_s": latency, "throughput_per_s": batch_size / latency,
            "energy_per_output_j": None, "avg_power_w": None}


def _ci(summary: Summary | None, n_default, scale: float = 1.0) -> tuple[float | None,
                                                                         float | None]:
    """The 95% confidence interval of the mean (None, None when there is none), per `scale`."""
    interval = summary.interval(n_default) if summary is not None else None
    if interval is None:
        return None, None
    return interval[0] / scale, interval[1] / scale


def device_label(gpu_model, num_gpus) -> str:
    name = gpu_model or "unknown device"
    return name if num_gpus else f"CPU ({name})"


def run_row(path: Path) -> dict:
    stored = RunResults.load(path)
    u, r, batch, task = stored.ulysses_degree, stored.ring_degree, stored.batch_size, stored.task
    n = stored.num_iterations
    latency_low, latency_high = _ci(stored.latency_per_iteration, n)
    energy_low, energy_high = _ci(stored.energy_per_iteration, n, batch)
    shared, steadiness = stored.shared_node_runs, stored.steadiness
    row = {
        "model_id": stored.model_id,
        "model": stored.model_id.rstrip("/").split("/")[-1],
        "task": task,
        "output": TASKS[task].noun,
        "gpu_model": stored.gpu_model,
        "device": device_label(stored.gpu_model, stored.num_gpus),
        "num_gpus": stored.num_gpus,
        "num_processes": stored.num_processes,
        "ulysses_degree": u,
        "ring_degree": r,
        "batch_size": batch,
        "height": stored.height,
        "width": stored.width,
        "num_frames": stored.num_frames,
        "fps": stored.fps,
        "inference_steps": stored.inference_steps,
        "weights": stored.weights or "unknown",
        "dtype": stored.dtype or "unknown",
        "options": options_label(stored.configurations),
        "use_torch_compile": bool(stored.configurations.get("use_torch_compile", False)),
        "energy_measured": bool(stored.energy_windows),
        "num_iterations": n,
        **iteration_metrics(stored),
        "batch_latency_ci95_low_s": latency_low,
        "batch_latency_ci95_high_s": latency_high,
        "energy_per_output_ci95_low_j": energy_low,
        "energy_per_output_ci95_high_j": energy_high,
        "peak_memory_gb": stored.peak_memory_gb,
        # Other runs of the campaign on the node during this one (None: not recorded).
        "shared_node_runs": len(shared) if shared is not None else None,
        # The coefficient of variation stayed under its limit (None: not recorded).
        "steady": steadiness.steady if steadiness is not None else None,
        "date": stored.date,
        "run_dir": str(path.parent),
    }
    row["time_per_output_s"] = row["batch_latency_s"] / batch
    for stage, totals in _stages(stored).items():
        row[f"stage_{stage}_time_s"] = _number(totals.time_s)
        row[f"stage_{stage}_energy_j"] = _number(totals.energy_j)
    return row


def _stages(stored: RunResults) -> dict:
    """Every stage of the report's columns, for runs that recorded a breakdown; none else."""
    breakdown = stored.stage_breakdown
    if breakdown is None:
        return {}
    return {stage: breakdown.get(stage) or StageTotals() for stage in STAGES}


def campaign_of(run_dir: Path, root: Path) -> str:
    """Which campaign under the report's tree a run belongs to: the path from the tree to the
    `diffusion/<task>/...` layout it was written in (a sweep's --out_dir), or to its base
    directory; "." for runs written straight under the tree."""
    try:
        parts = run_dir.relative_to(root).parts[:-1]
    except ValueError:
        return str(run_dir.parent)
    if "diffusion" in parts:
        parts = parts[:len(parts) - 1 - parts[::-1].index("diffusion")]
    return "/".join(parts) or "."


def load_table(root: Path):
    import pandas as pd

    paths = find_results(root)
    if not paths:
        raise ReportError(f"no {RESULTS} under {root}; point the report at a run tree "
                          "(e.g. run/ after a sweep)")
    rows = []
    for path in paths:
        try:
            rows.append({**run_row(path), "campaign": campaign_of(path.parent, root)})
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"warning: {path} skipped: {err}", file=sys.stderr)
    if not rows:
        raise ReportError(f"none of the {len(paths)} {RESULTS} file(s) under {root} is a "
                          "readable result of this benchmark (see the warnings above)")
    df = pd.DataFrame(rows)
    return df.sort_values([*HARDWARE_KEYS, "model_id", "num_gpus", "ulysses_degree",
                           "ring_degree", "batch_size", "options"],
                          kind="stable").reset_index(drop=True)


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


def _size(row) -> str:
    size = f"{row['height']}x{row['width']}"
    if row.get("num_frames"):
        size += f"x{int(row['num_frames'])}f"
    return size


def _markdown_row(row, has_stages: bool) -> str:
    row = row.where(row.notna(), None)
    gpus = str(row["num_gpus"]) if row["num_gpus"] else f"0 ({row['num_processes']} proc)"
    cells = [row["model"], row["device"], gpus, f"{row['ulysses_degree']} x {row['ring_degree']}",
             str(row["batch_size"]), _size(row), str(row["inference_steps"]), row["weights"],
             row["dtype"], row["options"] or "-", _fmt(row["batch_latency_s"], ".3f"),
             _fmt(row["throughput_per_s"], ".3f"), _fmt(row["energy_per_output_j"], ",.1f"),
             _fmt(row["avg_power_w"], ",.1f"), _fmt(row["peak_memory_gb"], ".2f")]
    if has_stages:
        cells.append(_stages_text(row))
    return "| " + " | ".join(cells) + " |"


def markdown(df) -> str:
    """One table per task, device, weights kind and dtype."""
    has_stages = any(c.startswith("stage_") for c in df.columns)
    out = [f"# Benchmark report: {len(df)} run(s)", ""]
    for (task, device, weights, dtype), group in df.groupby(HARDWARE_KEYS, sort=True):
        unit = TASKS[task].noun
        out += [f"## {task}: {device}, {weights} weights, {dtype}", ""]
        header = ["model", "device", "GPUs", "U x R", "batch", "size", "steps", "weights",
                  "dtype", "options", "latency / batch (s)", f"{unit}s / s", f"J / {unit}",
                  "power (W)", "peak mem (GB)"]
        if has_stages:
            header.append("stages (s / batch)")
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += [_markdown_row(row, has_stages) for _, row in group.iterrows()]
        out.append("")
    return "\n".join(out)


def write_report(root: Path, out_dir: Path, plots: bool = True) -> dict:
    """The table, the markdown and the plots of every run under `root`, written into `out_dir`.
    What could not be written for want of a package is named in `missing` (with the way to get
    it), never a traceback: the table is the report's result, the plots its illustration."""
    df = load_table(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "runs.csv", "parquet": out_dir / "runs.parquet",
             "markdown": out_dir / "report.md"}
    df.to_csv(paths["csv"], index=False)
    missing = []
    try:
        df.to_parquet(paths["parquet"], index=False)
    except ImportError:
        missing.append(f"runs.parquet not written: it needs pyarrow ({INSTALL_HINT})")
        del paths["parquet"]
    text = markdown(df)
    paths["markdown"].write_text(text + "\n")
    written_plots = []
    if plots:
        try:
            from mlenergy.diffusion.tools import report_plots

            written_plots = report_plots.plot_all(df, out_dir)
        except ImportError as err:
            if "matplotlib" not in str(err):
                raise
            missing.append(f"plots not drawn: they need matplotlib ({INSTALL_HINT}); "
                           "or pass --no_plots")
    return {"table": df, "markdown": text, "paths": paths, "plots": written_plots,
            "missing": missing}


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class ReportArgs:
    """Aggregate every results.json under a run tree into one table (CSV, Parquet, Markdown)
    and plots, grouped by GPU model, weights kind and dtype. Needs pandas, pyarrow and
    matplotlib: pip install -e '.[report]' (the report extra)."""

    run_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_DIR")]]
    """A run tree (e.g. run/ after a sweep) or one run directory: every results.json under it."""
    out_dir: Optional[Path] = None
    """Where runs.csv, runs.parquet, report.md and the plots go. Default: RUN_DIR/report."""
    plots: bool = True
    """Draw the plots (needs matplotlib; --no_plots: the table only)."""


def parse_args(argv) -> ReportArgs:
    return parse_one_line(
        lambda args: tyro.cli(ReportArgs, args=args, use_underscores=True, prog=PROG,
                              description=one_paragraph(ReportArgs.__doc__)), argv, prog=PROG)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.run_dir.is_dir():
        print(f"error: {args.run_dir} is not a directory; pass the run tree (e.g. run/)",
              file=sys.stderr)
        return 2
    out_dir = args.out_dir or args.run_dir / "report"
    if out_dir.exists() and not out_dir.is_dir():
        print(f"error: --out_dir {out_dir} is a file; pass a directory", file=sys.stderr)
        return 2
    try:
        report = write_report(args.run_dir, out_dir, args.plots)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # pandas: the table itself needs it
        print(f"error: the report needs {err.name or 'pandas'}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    print(report["markdown"])
    for kind, path in report["paths"].items():
        print(f"{kind}: {path}")
    for path in report["plots"]:
        print(f"plot: {path}")
    for note in report["missing"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from mlenergy.diffusion.process.console import exit_quietly_on_broken_pipe

    sys.exit(exit_quietly_on_broken_pipe(main))
