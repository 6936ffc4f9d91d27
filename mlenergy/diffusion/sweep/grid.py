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

from mlenergy.diffusion.sweep.point import Point

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


def check_models(task: str, models, benchmark_args=()) -> None:
    """Ids the benchmark would not take. An unregistered hub id (or a local directory) is the
    benchmark's to judge when the points name its family, as `run` does."""
    from mlenergy.diffusion.models.registry import MODELS, known_model_ids

    family_given = "--workload.family" in _flag_names(benchmark_args)
    for model_id in models:
        spec = MODELS.get(model_id)
        if spec is None and not Path(model_id).is_dir() and not family_given:
            raise SweepError(f"unknown model id {model_id!r}; known {task} models: "
                             + ", ".join(known_model_ids(task)) + "; for another hub id, name "
                             "its family after `--` (e.g. -- --workload.family flux)")
        if spec is not None and spec.task != task:
            raise SweepError(f"{model_id} is a {spec.task} model; sweep it with --task "
                             f"{spec.task}, or drop it from --models")


def make_points(grid: Grid) -> list[Point]:
    from mlenergy.diffusion.planning.plan import default_base_dir

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
    from mlenergy.diffusion.inputs.config import BenchmarkConfig, TextToVideo

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
    from mlenergy.diffusion.inputs.config import ConfigError, parse_cli

    unknown = [name for name in _flag_names(flags) if name not in _known_benchmark_flags()]
    if unknown:
        raise SweepError(f"the benchmark has no flag {unknown[0]}; see `mlenergy-diffusion "
                         "run --help`")
    argv = [f"workload:{task}", *flags]
    try:
        # The parser reports to the terminal itself; the sweep says it in one line instead.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return parse_cli(argv)
    except ConfigError as err:
        raise SweepError(f"the benchmark rejects {shlex.join(flags)}: {err}") from None
    except SystemExit:
        raise SweepError(f"the benchmark cannot parse {shlex.join(flags)}; run `mlenergy-diffusion "
                         f"run {shlex.join(argv)}` to see why") from None


def _grid_free(argv) -> tuple[str, ...]:
    """A point's argv less its subcommand and the grid's own flags: what its option set, the
    preset's model flags and the common flags say, the same for many points."""
    return tuple(_without([a for a in argv if not a.startswith("workload:")], set(GRID_FLAGS)))


def _flag_values(argv) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i] in GRID_FLAGS}


def point_config(task: str, argv, parsed: dict | None = None):
    """The benchmark's configuration of one point's exact argv. The flags other than the grid's
    are parsed once per distinct set (`parsed` caches them); the grid's own values are then
    filled in from the same argv, which holds each of them once (`check_flags`)."""
    key = _grid_free(argv)
    parsed = {} if parsed is None else parsed
    if key not in parsed:
        parsed[key] = parse_benchmark(task, list(key))
    config, grid = parsed[key], _flag_values(argv)
    workload = dataclasses.replace(
        config.workload, model_id=grid["--workload.model_id"],
        batch_size=int(grid["--workload.batch_size"]),
        base_dir=Path(grid["--workload.base_dir"]))
    return dataclasses.replace(config, workload=workload,
                               ulysses_degree=int(grid["--ulysses_degree"]),
                               ring_degree=int(grid["--ring_degree"]))


def plan_point(task: str, argv, nproc: int, device_type: str, gpus_per_node: int | None = None,
               parsed: dict | None = None):
    """The benchmark's plan of one point's exact argv, for the machine it will run on: the run
    directory and identity the benchmark itself will compute. Raises ConfigError (or
    SweepError) where the benchmark would refuse the point."""
    from mlenergy.diffusion.planning.plan import make_plan
    from mlenergy.diffusion.process.launch import Launch

    config = point_config(task, argv, parsed)
    return make_plan(config, Launch.for_machine(nproc, device_type, gpus_per_node))


def _skip(point: Point, reason: str) -> None:
    point.status, point.reason = "skipped", reason


def resolve(points: list[Point], grid: Grid, gpus: int, device_type: str,
            gpus_per_node: int | None = None) -> None:
    """Give every point its run directory and identity (from the plan of the exact argv it is
    launched with), or the reason it is skipped; mark points whose results of the same identity
    exist as already done. Raises SweepError when a run directory holds another configuration
    (unless the points pass --overwrite_results) or two points share one."""
    from mlenergy.diffusion.inputs.config import ConfigError
    from mlenergy.diffusion.output import rundir

    parsed: dict = {}
    conflicts: list[tuple[Point, str]] = []
    for point in points:
        if point.nproc > gpus:
            _skip(point, f"needs {point.nproc} GPUs (processes); {gpus} available")
            continue
        if gpus_per_node and point.nproc > gpus_per_node and point.nproc % gpus_per_node:
            _skip(point, f"{point.nproc} processes do not fill whole nodes of {gpus_per_node} "
                         "GPUs")
            continue
        try:
            plan = plan_point(grid.task, point.benchmark_args, point.nproc, device_type,
                              gpus_per_node, parsed)
        except ConfigError as err:
            _skip(point, str(err))
            continue
        point.run_dir, point.identity = plan.run_dir, rundir.identity(plan)
        existing = rundir.inspect(plan.run_dir, point.identity)
        if existing.state == "done":
            point.status, point.reason = "already_done", existing.detail
        elif existing.state == "other" and not plan.overwrite_results:
            conflicts.append((point, existing.detail))
    _check_one_point_per_run_dir(points)
    if conflicts:
        point, detail = conflicts[0]
        raise SweepError(
            f"{len(conflicts)} point(s) would measure into a run directory that holds another "
            f"configuration, e.g. {detail}; pass --overwrite_results after `--` to move those "
            "results aside and measure again, or choose another --out_dir")


def _check_one_point_per_run_dir(points: list[Point]) -> None:
    """Two points of one grid must never share a run directory: the second would be refused
    (or called done) because of the first."""
    seen: dict[Path, Point] = {}
    for point in points:
        if point.run_dir is None:
            continue
        other = seen.setdefault(Path(point.run_dir), point)
        if other is not point:
            raise SweepError(
                f"two points of the grid share the run directory {point.run_dir}: "
                f"{other.label()} and {point.label()}; the directory name leaves out what "
                "tells them apart (give each model folder a distinct name, or "
                "--workload.model_name; make option sets differ in a setting the name shows)")
