"""`mlenergy-diffusion`: one command for the benchmark and its tools.

    mlenergy-diffusion run [FLAGS] workload:t2i [--workload.* FLAGS]   (workload:t2v: videos)
    mlenergy-diffusion sweep | report | quality | check | models | presets ...
    mlenergy-diffusion --version

Each subcommand hands the rest of the command line to its tool's `main(argv)`, so
`mlenergy-diffusion run ...` takes exactly what `python -m mlenergy.diffusion.benchmark ...` takes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from typing import Optional, Sequence

import tyro

from mlenergy.diffusion.inputs.argcheck import parse_one_line
from mlenergy.diffusion.inputs.config import help_from_docstrings
from mlenergy.diffusion.inputs.task import TaskName
from mlenergy.diffusion.process.console import exit_quietly_on_broken_pipe

PROG = "mlenergy-diffusion"

# name -> (module whose main(argv) runs it, what it does)
COMMANDS = {
    "run": ("mlenergy.diffusion.benchmark",
            "measure latency and GPU energy of one configuration (the benchmark)"),
    "sweep": ("mlenergy.diffusion.sweep",
              "run a grid of configurations, resumably, or write a Slurm script for it"),
    "report": ("mlenergy.diffusion.tools.report",
               "one table (CSV, Parquet, Markdown) and plots of every run under a directory"),
    "quality": ("mlenergy.diffusion.results.quality",
                "PSNR and SSIM of a finished run's images against an exact reference run"),
    "check": ("mlenergy.diffusion.tools.check_runs",
              "check that run directories are complete and hold a real GPU measurement"),
    "models": ("mlenergy.diffusion.cli", "list the registered models and their defaults"),
    "presets": ("mlenergy.diffusion.sweep.presets",
                "list the sweep presets, or print a preset's `hf download` commands"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {PROG} [-h] [--version] COMMAND [ARGS ...]", "",
             "Latency and GPU energy of diffusion models (xDiT sequence parallelism, Zeus).", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options:",
              "  -h, --help  show this message and exit",
              "  --version   print the benchmark's version (and git commit) and exit", "",
              f"`{PROG} COMMAND --help` documents a command's flags. Several processes:",
              f"torchrun --nproc_per_node=N --no-python {PROG} run ...  (or, as before,",
              "torchrun --nproc_per_node=N mlenergy/diffusion/benchmark.py ...)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return exit_quietly_on_broken_pipe(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help"):
        return _print(usage())
    if command == "--version":
        from mlenergy.diffusion.output import provenance

        return _print(provenance.version_text())
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} "
              f"(`{PROG} --help`)", file=sys.stderr)
        return 2
    if command == "models":
        return list_models(rest)
    tool = importlib.import_module(COMMANDS[command][0])
    # The tools' parsers name the program after sys.argv[0] in their usage lines.
    program, sys.argv[0] = sys.argv[0], f"{PROG} {command}"
    try:
        return tool.main(rest) or 0
    finally:
        sys.argv[0] = program


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class ModelsArgs:
    """List the registered models: what `--workload.model_id` accepts without a local directory,
    and the defaults a run takes when its flags leave them open."""

    task: Optional[TaskName] = None
    """Only the models of this task. Default: both."""

    json: bool = False
    """Print a JSON list (one object per model) instead of the table."""


def registered_models(task: str | None = None) -> list[dict]:
    """One row per registered model (aliases folded into their model), in registry order."""
    from mlenergy.diffusion.models.registry import MODELS

    rows = []
    for name, spec in MODELS.items():
        if name != spec.model_id or (task is not None and spec.task != task):
            continue
        rows.append({
            "model_id": spec.model_id, "task": spec.task, "family": spec.family_name,
            "height": spec.height, "width": spec.width, "steps": spec.steps,
            "num_frames": spec.num_frames, "fps": spec.fps, "dtype": spec.dtype,
            "guidance_scale": spec.guidance_scale, "aliases": list(spec.aliases),
        })
    return rows


def models_table(rows: list[dict]) -> str:
    header = ("model id", "task", "family", "size", "steps", "frames", "fps", "dtype",
              "guidance")
    cells = [header] + [
        (r["model_id"], r["task"], r["family"], f"{r['height']}x{r['width']}", str(r["steps"]),
         "-" if r["num_frames"] is None else str(r["num_frames"]),
         "-" if r["fps"] is None else str(r["fps"]), r["dtype"], f"{r['guidance_scale']:g}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in cells]
    aliases = [f"  {alias} -> {r['model_id']}" for r in rows for alias in r["aliases"]]
    if aliases:
        lines += ["", "Also accepted:", *aliases]
    return "\n".join(lines)


def list_models(argv: Sequence[str]) -> int:
    prog = f"{PROG} models"
    args = parse_one_line(
        lambda a: tyro.cli(ModelsArgs, args=a, use_underscores=True, prog=prog,
                           description="List the registered models and their defaults."),
        argv, prog=prog)
    rows = registered_models(args.task)
    return _print(json.dumps(rows, indent=2) if args.json else models_table(rows))


def _print(text: str) -> int:
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
