"""The sweep's command line: check the input, build and validate the grid, then run it here,
print its commands, or hand it to Slurm."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from mlenergy.diffusion.inputs.task import TEXT_TO_IMAGE, TaskName
from mlenergy.diffusion.output import node_sharing as sharing
from mlenergy.diffusion.sweep import campaign, grid as grid_module, groups, local, presets, slurm
from mlenergy.diffusion.sweep.grid import Grid, SweepError
from mlenergy.diffusion.sweep.point import Point
from mlenergy.diffusion.sweep.slurm_task import split_benchmark_args

Repeatable = tyro.conf.UseAppendAction


@dataclasses.dataclass(frozen=True)
class SweepArgs:
    """Run a grid of benchmark points (models x option sets x ulysses/ring x batch sizes), each
    with ulysses x ring processes, here (one at a time, or --pack) or as Slurm job arrays.
    Flags after `--` go to every point's benchmark (e.g. -- --workload.weights random)."""

    preset: Optional[Literal[tuple(presets.PRESETS)]] = None  # type: ignore[valid-type]
    """leaderboard: batch 1 2 4 8 16 and (ulysses, ring) in 1x1 1x2 2x1 1x4 2x2 4x1 1x8 2x4 4x2
    8x1, every registered model of the task at its registry defaults. leaderboard-v3: the
    ML.ENERGY leaderboard v3 campaign, its 7 image and 6 video models with their v3 settings
    (FLUX.1-dev 50 steps, bf16 where v3 ran bf16, Wan flow shift 12, SD3.5 guidance 7), the
    leaderboard's prompt sampling, the same batches and degrees (docs/leaderboard-v3.md).
    --models/--batch_sizes/--parallel override a preset's parts."""
    task: TaskName = TEXT_TO_IMAGE.name
    """The benchmark subcommand of every point."""
    models: tuple[str, ...] = ()
    """Registered model ids (or local diffusers directories)."""
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes."""
    parallel: tuple[str, ...] = ()
    """(Ulysses, ring) degrees as UxR, e.g. 1x1 2x1 1x2."""
    options: Annotated[tuple[str, ...], Repeatable] = ()
    """One set of benchmark flags per point variant; repeat for more, with `=` (e.g. --options=
    "--options=--use_torch_compile --warmup_iters 2"). Default: one empty set."""
    out_dir: Path = Path("run")
    """Root of the run tree: points go to OUT_DIR/diffusion/<task>/<model>/<params>, logs to
    OUT_DIR/sweep_logs."""
    summary: Optional[Path] = None
    """Where the sweep summary JSON goes. Default: OUT_DIR/sweep_summary.json."""
    gpus: Optional[int] = None
    """The most GPUs (processes, without CUDA) one point may use; points needing more are
    skipped. Default: visible CUDA GPUs, else CPU cores; --gpus_per_node for Slurm."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Device the points are validated for (auto: this machine's; cuda for Slurm)."""
    timeout_s: float = 3600.0
    """A point running longer is stopped (all its processes) and recorded as failed."""
    retries: int = 0
    """Run a point that failed (not one that timed out) up to this many more times."""
    compile_cache: Optional[Path] = None
    """inductor's kernel cache for every point (TORCHINDUCTOR_CACHE_DIR). Default:
    OUT_DIR/compile_cache, unless TORCHINDUCTOR_CACHE_DIR is set already."""
    pack: bool = False
    """Run points whose GPU sets are disjoint side by side on this node, each with its own
    CUDA_VISIBLE_DEVICES slice and rendezvous port. Default: one point at a time."""
    one_point_per_process: bool = False
    """Give every point a launch of its own. Default: points that differ only in batch size (or
    seed, iteration counts, prompts) are measured one after another by one launch, which loads
    the pipeline once (`benchmark.py ... --then ...`); each still gets its own warm-up,
    windows, run directory and results."""
    dry_run: bool = False
    """Print each launch's command (or why a point is skipped); run nothing."""
    emit: Optional[Literal["slurm"]] = None
    """slurm: print a bash script that submits the pending points as Slurm job arrays."""
    submit: bool = False
    """Submit the job arrays with sbatch now and print their job ids (implies --emit slurm)."""
    gpus_per_node: int = 8
    """Slurm: GPUs per node; bigger points span whole nodes."""
    cpus_per_gpu: int = 8
    """Slurm: CPUs each task asks for, per GPU."""
    mem_per_gpu: Optional[str] = "64G"
    """Slurm: memory each task asks for, per GPU (e.g. 64G, 500M; None: the partition's
    default)."""
    partition: Optional[str] = None
    """Slurm: partition (#SBATCH --partition)."""
    account: Optional[str] = None
    """Slurm: account (#SBATCH --account)."""
    time_limit: Optional[str] = None
    """Slurm: time limit of each task (#SBATCH --time), e.g. 2:00:00."""
    array_limit: Optional[int] = None
    """Slurm: at most this many tasks of one array run at once (--array=0-N%K)."""
    slurm_option: Annotated[tuple[str, ...], Repeatable] = ()
    """Slurm: an extra #SBATCH line; repeat for more (e.g. --slurm_option=--qos=high)."""


SLURM_ONLY = ("partition", "account", "time_limit", "array_limit", "slurm_option",
              "cpus_per_gpu", "mem_per_gpu", "gpus_per_node")


def _duplicates(values) -> list:
    seen, repeated = set(), []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    return repeated


def check_args(args: SweepArgs) -> None:
    """Everything that is wrong with the flags themselves, in one line each."""
    if not math.isfinite(args.timeout_s) or args.timeout_s <= 0:
        raise SweepError(f"--timeout_s must be a finite number of seconds above 0, got "
                         f"{args.timeout_s}")
    for name in ("retries", "gpus", "gpus_per_node", "cpus_per_gpu", "array_limit"):
        value, least = getattr(args, name), 0 if name == "retries" else 1
        if value is not None and value < least:
            raise SweepError(f"--{name} must be at least {least}, got {value}")
    if any(b < 1 for b in args.batch_sizes):
        raise SweepError(f"--batch_sizes must be at least 1, got {list(args.batch_sizes)}")
    for name in ("models", "batch_sizes", "parallel", "options"):
        repeated = _duplicates(getattr(args, name))
        if repeated:
            raise SweepError(f"--{name} lists {', '.join(map(repr, repeated))} more than once; "
                             "give each value once")
    if args.mem_per_gpu and not re.fullmatch(r"\d+[KMGTkmgt]?", args.mem_per_gpu):
        raise SweepError(f"--mem_per_gpu {args.mem_per_gpu!r} is not a Slurm size like 64G or "
                         "500M")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise SweepError(f"--out_dir {args.out_dir} is a file; pass a directory")
    if args.summary is not None and (args.summary.is_dir() or any(
            p.exists() and not p.is_dir() for p in args.summary.parents)):
        raise SweepError(f"--summary {args.summary} cannot be written as a file; pass a file "
                         "path in a directory")
    slurm_mode = args.emit == "slurm" or args.submit
    if slurm_mode and (args.pack or args.dry_run):
        raise SweepError(f"--{'pack' if args.pack else 'dry_run'} is for local runs; Slurm "
                         "packs the arrays' tasks itself (drop it, or drop --emit/--submit)")
    defaults = SweepArgs()
    changed = [n for n in SLURM_ONLY if getattr(args, n) != getattr(defaults, n)]
    if changed and not slurm_mode:
        raise SweepError(f"--{changed[0]} is a Slurm setting; add --emit slurm or --submit")


def _split_options(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as err:  # an unclosed quote
        raise SweepError(f"--options={text!r} cannot be split into flags ({err}); close its "
                         "quotes") from None


def make_grid(args: SweepArgs, benchmark_args: list[str]) -> Grid:
    preset = presets.for_task(args.preset, args.task)
    models = args.models or tuple(preset.get("models", ()))
    batch_sizes = args.batch_sizes or preset.get("batch_sizes", ())
    parallel = args.parallel or tuple(f"{u}x{r}" for u, r in preset.get("parallel", ()))
    missing = [flag for flag, v in (("--models", models), ("--batch_sizes", batch_sizes),
                                    ("--parallel", parallel)) if not v]
    if missing:
        raise SweepError(f"no {', '.join(missing)} given; name them, or use --preset leaderboard")
    grid_module.check_models(args.task, models, benchmark_args)
    option_sets = tuple(_split_options(o) for o in (args.options or ("",)))
    grid_module.check_flags(option_sets, benchmark_args)
    return Grid(task=args.task, models=tuple(models), batch_sizes=tuple(batch_sizes),
                parallel=tuple(grid_module.parse_parallel(p) for p in parallel),
                option_sets=option_sets, common_args=tuple(benchmark_args), out_dir=args.out_dir,
                model_flags={m: tuple(f) for m, f in preset.get("flags", {}).items()})


def _device_type(args: SweepArgs) -> str:
    if args.device != "auto":
        return args.device
    if args.emit == "slurm" or args.submit:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpus(args: SweepArgs, device_type: str) -> int:
    if args.gpus is not None:
        return args.gpus
    if args.emit == "slurm" or args.submit:
        return args.gpus_per_node
    if device_type == "cuda":
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def _slots(gpus: int, device_type: str) -> tuple[str, ...]:
    """The device of each GPU slot: CUDA_VISIBLE_DEVICES entries if the caller set it. A slot
    list with a device twice, or fewer devices than --gpus, is refused: points would share a GPU,
    or wait for one that never comes."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d.strip() for d in (raw or "").split(",") if d.strip()]
    if device_type != "cuda" or raw is None:
        return tuple(str(i) for i in range(gpus))
    twice = _duplicates(visible)
    if twice:
        raise SweepError(f"CUDA_VISIBLE_DEVICES={raw} lists device {twice[0]} more than once; "
                         "list each GPU once")
    if len(visible) < gpus:
        raise SweepError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={raw} gives {len(visible)}; "
                         f"pass --gpus {len(visible)} or make more GPUs visible")
    return tuple(visible[:gpus])


def compile_cache_dir(args: SweepArgs) -> Path | None:
    """The kernel cache the points share; None where the caller's environment names one."""
    if args.compile_cache is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    return args.compile_cache or args.out_dir / "compile_cache"


def _require_a_runnable_point(points: list[Point]) -> None:
    if points and all(p.status == "skipped" for p in points):
        raise SweepError(f"no point of the grid can run ({len(points)} skipped), e.g. "
                         f"{points[0].label()}: {points[0].reason}")


def _summary_header(args: SweepArgs, argv: list[str], grid: Grid, device_type: str, gpus: int,
                    cache: Path | None, started: datetime) -> dict:
    from mlenergy.diffusion.output import provenance

    return {"started": started.isoformat(timespec="seconds"), "finished": None,
            "command": campaign.command_line(argv), "version": provenance.version_text(),
            "grid": campaign.grid_record(grid), "preset": args.preset,
            "out_dir": str(args.out_dir), "device": device_type, "gpus": gpus,
            "pack": args.pack, "timeout_s": args.timeout_s,
            "one_point_per_process": args.one_point_per_process,
            "compile_cache": str(cache) if cache else None, "stopped_by": None}


def _take_out_dir(args: SweepArgs):
    """One local sweep per run tree at a time: a second refuses in one line (its summary and
    logs would interleave with the first's)."""
    from mlenergy.diffusion.inputs.config import ConfigError
    from mlenergy.diffusion.output.runlock import RunDirLock

    lock = RunDirLock(args.out_dir / "sweep", release_on_signals=False,
                      holder_does="being swept by another sweep")
    try:
        lock.acquire()
    except ConfigError as err:
        raise SweepError(str(err)) from None
    return lock


def run_here(points: list[Point], args: SweepArgs, argv: list[str], grid: Grid,
             device_type: str, gpus: int) -> int:
    summary_path = args.summary or args.out_dir / campaign.SUMMARY
    cache = compile_cache_dir(args)
    cache = cache.resolve() if cache is not None else None
    header = _summary_header(args, argv, grid, device_type, gpus, cache, datetime.now())
    previous = campaign.read_previous(summary_path)

    def write_summary() -> None:
        local.note_shared_nodes(points)
        header["finished"] = datetime.now().isoformat(timespec="seconds")
        header["gpu_time"] = local.efficiency(points, settings.booked)
        campaign.write_summary(summary_path, header, points, campaign.counts(points),
                               previous)

    settings = local.Settings(
        timeout_s=args.timeout_s, retries=args.retries, pack=args.pack,
        slots=_slots(gpus, device_type), env=local.child_env(cache),
        log=lambda p: local.log_path(args.out_dir, p),
        shared_node_dir=sharing.node_dir(args.out_dir / "shared_node_runs"),
        one_point_per_process=args.one_point_per_process)
    try:
        signum = local.run_points(points, settings, progress=write_summary,
                                  report=lambda line: print(line, flush=True))
        if signum is not None:
            import signal

            header["stopped_by"] = signal.Signals(signum).name
    finally:
        write_summary()
    campaign.print_summary(points, summary_path, header.get("gpu_time"))
    if signum is not None:
        return 128 + signum
    return 1 if any(p.status == "failed" for p in points) else 0


def _slurm_settings(args: SweepArgs) -> slurm.SlurmSettings:
    return slurm.SlurmSettings(device=_device_type(args),
        out_dir=args.out_dir, timeout_s=args.timeout_s, gpus_per_node=args.gpus_per_node,
        cpus_per_gpu=args.cpus_per_gpu, mem_per_gpu=args.mem_per_gpu, partition=args.partition,
        account=args.account, time_limit=args.time_limit, array_limit=args.array_limit,
        extra=tuple(args.slurm_option), compile_cache=compile_cache_dir(args),
        one_point_per_process=args.one_point_per_process)


def hand_to_slurm(points: list[Point], args: SweepArgs, argv: list[str]) -> int:
    settings = _slurm_settings(args)
    try:
        if not args.submit:
            script = slurm.campaign_script(points, settings, argv)
            print(script, end="")
            kept = campaign.write_emitted_script(args.out_dir, script)
            print(f"(a copy of this script: {kept})", file=sys.stderr)
            return 0
        pending = sum(p.status == "pending" for p in points)
        done = sum(p.status == "already_done" for p in points)
        print(f"{pending} point(s) to run, {done} already done, "
              f"{sum(p.status == 'skipped' for p in points)} skipped")
        if not pending:
            print("nothing to submit")
            return 0
        slurm.submit(points, settings)
    except slurm.SubmitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"job ids and scripts: {campaign.slurm_dir(args.out_dir)}")
    return 0


# The sweep's flags that may be given more than once (each adds a value).
REPEATABLE = ("--options", "--slurm_option")


def check_argv(own: list[str], benchmark_args: list[str]) -> None:
    """Before parsing: a sweep flag given twice (the last would silently win) and a newline in
    any argument (it would become a command in a generated script) are refused."""
    names = [a.split("=", 1)[0] for a in own if a.startswith("--")]
    twice = [n for n in _duplicates(names) if n not in REPEATABLE]
    if twice:
        raise SweepError(f"{twice[0]} is given more than once; give it once (list several "
                         f"values after one {twice[0]})")
    for flag, value in zip(own, own[1:] + [""]):
        if flag in REPEATABLE and value.startswith("--"):
            raise SweepError(f"{flag} {value}: a value that starts with -- must follow an "
                             f"equals sign: {flag}={shlex.quote(value)}")
    for arg in own + benchmark_args:
        if "\n" in arg or "\r" in arg:
            raise SweepError(f"argument {arg!r} holds a line break; no path, option or value "
                             "of a campaign may")


def _parse(argv: list[str]) -> tuple[SweepArgs, list[str]]:
    from mlenergy.diffusion.inputs.argcheck import parse_one_line

    own, benchmark_args = split_benchmark_args(argv)
    check_argv(own, benchmark_args)
    prog = "mlenergy-diffusion sweep"
    # The parser's own refusals (an unknown flag, a value it cannot read) as one line too.
    return parse_one_line(lambda a: tyro.cli(SweepArgs, args=a, use_underscores=True, prog=prog),
                          own, prog, repeatable=REPEATABLE), benchmark_args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, benchmark_args = _parse(argv)
        check_args(args)
        grid = make_grid(args, benchmark_args)
        device_type = _device_type(args)
        gpus = _gpus(args, device_type)
        slurm_mode = args.emit == "slurm" or args.submit
        if not slurm_mode:
            _slots(gpus, device_type)
        points = grid_module.make_points(grid)
        grid_module.resolve(points, grid, gpus, device_type,
                            args.gpus_per_node if slurm_mode else None)
        _require_a_runnable_point(points)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if slurm_mode:
        return hand_to_slurm(points, args, argv)
    if args.dry_run:
        for p in points:
            if p.status != "pending":
                print(f"# {p.status.replace('_', ' ')}: {p.label()}: {p.reason}")
        for launch in groups.make_groups(points, args.one_point_per_process):
            print(shlex.join(local.local_command(launch)))
        print(f"# {campaign.dry_run_totals(points, args.one_point_per_process)}")
        return 0
    try:
        lock = _take_out_dir(args)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return run_here(points, args, argv, grid, device_type, gpus)
    finally:
        lock.release()
