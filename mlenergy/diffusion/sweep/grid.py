"""The grid of a sweep: models x option sets x (Ulysses, ring) x batch sizes, every point checked
by the benchmark's own parser and `make_plan` for its process count before anything launches."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mlenergy.diffusion.sweep.point import Point, results_complete, results_path

# Set by the grid itself; the same flag among the common benchmark flags would be ambiguous.
GRID_FLAGS = ("--ulysses_degree", "--ring_degree", "--workload.model_id",
              "--workload.batch_size", "--workload.base_dir")


class SweepError(ValueError):
    """Bad sweep input: one line that says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Grid:
    task: str
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    parallel: tuple[tuple[int, int], ...]
    # Each option set is a list of benchmark flags; one point variant per set.
    option_sets: tuple[tuple[str, ...], ...]
    common_args: tuple[str, ...]
    out_dir: Path
    # A preset's flags for each model's points; flags the user gives win over them.
    model_flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def parse_parallel(text: str) -> tuple[int, int]:
    try:
        u, r = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SweepError(f"--parallel {text!r} is not ULYSSESxRING (e.g. 2x1 for Ulysses 2, "
                         "ring 1)") from None
    if u < 1 or r < 1:
        raise SweepError(f"--parallel {text!r}: degrees must be at least 1")
    return u, r


def _flag_names(args) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def _without(flags, names: set[str]) -> list[str]:
    """`flags` (each `--name value` or `--name=value`) less those named in `names`."""
    out, i = [], 0
    flags = list(flags)
    while i < len(flags):
        name = flags[i].split("=", 1)[0]
        takes_value = "=" not in flags[i] and i + 1 < len(flags) \
            and not flags[i + 1].startswith("--")
        step = 2 if takes_value else 1
        if name not in names:
            out += flags[i:i + step]
        i += step
    return out


def check_flags(option_sets, common_args) -> None:
    """Flags the grid sets, subcommands, and a flag given twice, or both in an option set and
    after `--` (which one would win is not what anyone meant)."""
    for arg in [a for s in option_sets for a in s] + list(common_args):
        name = arg.split("=", 1)[0]
        if name in GRID_FLAGS:
            raise SweepError(f"{name} is set by the sweep grid; drop it from the benchmark flags "
                             "(use --models, --batch_sizes, --parallel, --out_dir)")
        if arg.startswith("workload:"):
            raise SweepError(f"{arg}: the subcommand comes from --task; drop it from the "
                             "benchmark flags")
    for flags in (*option_sets, common_args):
        names = _flag_names(flags)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SweepError(f"{twice[0]} is given twice in {shlex.join(flags)}; give it once")
    common = set(_flag_names(common_args))
    for flags in option_sets:
        both = sorted(common & set(_flag_names(flags)))
        if both:
            raise SweepError(f"{', '.join(both)} is given in --options and after `--`; set it "
                             "in one place")


def check_models(task: str, models) -> None:
    from mlenergy.diffusion.registry import MODELS, known_model_ids

    for model_id in models:
        spec = MODELS.get(model_id)
        if spec is None and not Path(model_id).is_dir():
            raise SweepError(f"unknown model id {model_id!r}; known {task} models: "
                             + ", ".join(known_model_ids(task)))
        if spec is not None and spec.task != task:
            raise SweepError(f"{model_id} is a {spec.task} model; sweep it with --task "
                             f"{spec.task}, or drop it from --models")


def make_points(grid: Grid) -> list[Point]:
    from mlenergy.diffusion.plan import default_base_dir

    points = []
    for model_id in grid.models:
        for flags in grid.option_sets:
            for u, r in grid.parallel:
                for batch in grid.batch_sizes:
                    base = default_base_dir(grid.task, model_id, grid.out_dir)
                    given = set(_flag_names([*flags, *grid.common_args]))
                    argv = [f"workload:{grid.task}", "--workload.model_id", model_id,
                            "--workload.batch_size", str(batch), "--workload.base_dir",
                            str(base), "--ulysses_degree", str(u), "--ring_degree", str(r),
                            *_without(grid.model_flags.get(model_id, ()), given),
                            *flags, *grid.common_args]
                    points.append(Point(model_id, batch, u, r, shlex.join(flags), argv))
    return points


def _known_benchmark_flags() -> set[str]:
    from mlenergy.diffusion.config import BenchmarkConfig, TextToVideo

    names = set()
    for prefix, cls in (("--", BenchmarkConfig), ("--workload.", TextToVideo)):
        for f in dataclasses.fields(cls):
            names.add(prefix + f.name)
            if f.type in (bool, "bool"):
                names.add(f"{prefix}no_{f.name}")
    return names


def parse_benchmark(task: str, flags) -> object:
    """The benchmark's configuration for these flags, through its own parser; a flag it does not
    know, or a value it cannot parse, becomes one line."""
    from mlenergy.diffusion.config import parse_cli
    from mlenergy.diffusion.config import ConfigError

    unknown = [name for name in _flag_names(flags) if name not in _known_benchmark_flags()]
    if unknown:
        raise SweepError(f"the benchmark has no flag {unknown[0]}; see python -m "
                         "mlenergy.diffusion.benchmark --help")
    argv = [f"workload:{task}", *flags]
    try:
        # The parser reports to the terminal itself; the sweep says it in one line instead.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return parse_cli(argv)
    except ConfigError as err:
        raise SweepError(f"the benchmark rejects {shlex.join(flags)}: {err}") from None
    except SystemExit:
        raise SweepError(f"the benchmark cannot parse {shlex.join(flags)}; run python -m "
                         f"mlenergy.diffusion.benchmark {shlex.join(argv)} to see why") from None


def _point_config(config, point: Point, base_dir: Path):
    workload = dataclasses.replace(config.workload, model_id=point.model_id,
                                   batch_size=point.batch_size, base_dir=base_dir)
    return dataclasses.replace(config, workload=workload, ulysses_degree=point.ulysses_degree,
                               ring_degree=point.ring_degree)


def resolve(points: list[Point], grid: Grid, gpus: int, device_type: str,
            gpus_per_node: int | None = None) -> None:
    """Give every point its run directory, or the reason it is skipped; mark points whose
    complete results exist as already done."""
    from mlenergy.diffusion.config import ConfigError
    from mlenergy.diffusion.launch import Launch
    from mlenergy.diffusion.plan import default_base_dir, make_plan

    # Parsed once per option set: the grid's own values are filled in per point.
    configs = {shlex.join(flags): parse_benchmark(grid.task, [*flags, *grid.common_args])
               for flags in grid.option_sets}
    for point in points:
        if point.nproc > gpus:
            point.status = "skipped"
            point.reason = f"needs {point.nproc} GPUs (processes); {gpus} available"
            continue
        if gpus_per_node and point.nproc > gpus_per_node and point.nproc % gpus_per_node:
            point.status = "skipped"
            point.reason = (f"{point.nproc} processes do not fill whole nodes of "
                            f"{gpus_per_node} GPUs")
            continue
        base = default_base_dir(grid.task, point.model_id, grid.out_dir)
        config = _point_config(configs[point.options], point, base)
        try:
            plan = make_plan(config, Launch.for_machine(point.nproc, device_type,
                                                        gpus_per_node))
        except ConfigError as err:
            point.status, point.reason = "skipped", str(err)
            continue
        point.run_dir = plan.run_dir
        if results_complete(results_path(plan.run_dir), point):
            point.status = "already_done"
            point.reason = f"{results_path(plan.run_dir)} is complete"
