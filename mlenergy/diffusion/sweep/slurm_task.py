"""One task of a Slurm job array: one point or a group of points sharing a pipeline, run like
the local sweep runs them.

    python -m mlenergy.diffusion.sweep.slurm_task --out_dir OUT --run_dir DIR [DIR ...] [--nodes N]
        [--nproc_per_node G] [--device D] [--timeout_s S] -- BENCHMARK FLAGS [--then ...]

Written into the arrays by `--emit slurm`; not meant to be typed. The task plans each point from
the exact benchmark flags it launches, as the sweep did, and skips one whose run directory holds
complete results of that identity (the benchmark's own test of done); the rest are measured by
one launch, and the points a failing launch did not reach by another. A one-node launch is a
`torchrun --standalone` in the task's allocation; a multi-node one is one `srun` of a torchrun
per node, meeting at a c10d rendezvous on this (the batch) node. SIGTERM from Slurm (scancel,
the time limit) stops the launch's processes.
Exit status: 0 every point done or already done, 1 one failed, 128 + signal when stopped.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path
from typing import Literal

from mlenergy.diffusion.output import node_sharing as sharing
from mlenergy.diffusion.sweep.groups import Group
from mlenergy.diffusion.sweep.local import Settings, child_env, local_command, log_path, run_points
from mlenergy.diffusion.sweep.point import Point, results_complete, results_path


@dataclasses.dataclass(frozen=True)
class TaskArgs:
    """Run one point of a Slurm job array (written by the sweep's --emit slurm)."""

    out_dir: Path
    """The campaign's run tree: logs go to OUT_DIR/sweep_logs, node-sharing records to
    OUT_DIR/shared_node_runs."""

    run_dir: tuple[Path, ...]
    """The points' run directories (the benchmark's naming), in the order of their flags."""

    nodes: int = 1
    """Nodes the point spans."""

    nproc_per_node: int = 1
    """Processes (GPUs) per node."""

    device: Literal["cuda", "cpu"] = "cuda"
    """The device the point runs on (what its plan, and so its identity, assumes)."""

    timeout_s: float = 3600.0
    """A launch is stopped (all its processes) after this long per point."""


def split_benchmark_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own flags, the flags after the first `--`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _flag_value(args: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def point_of(run_dir: Path, benchmark_args: list[str]) -> Point:
    return Point(model_id=_flag_value(benchmark_args, "--workload.model_id", "?"),
                 batch_size=int(_flag_value(benchmark_args, "--workload.batch_size", "1")),
                 ulysses_degree=int(_flag_value(benchmark_args, "--ulysses_degree", "1")),
                 ring_degree=int(_flag_value(benchmark_args, "--ring_degree", "1")),
                 options="", benchmark_args=benchmark_args, run_dir=run_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def multinode_command(point: Point | Group, nodes: int, per_node: int) -> list[str]:
    head = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    job = "-".join(filter(None, (os.environ.get("SLURM_JOB_ID"),
                                 os.environ.get("SLURM_ARRAY_TASK_ID"))))
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", *([f"--cpus-per-task={cpus}"] if cpus else []),
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
            f"--nproc_per_node={per_node}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={head}:{_free_port()}", f"--rdzv_id=mlenergy-{job or os.getpid()}",
            "-m", "mlenergy.diffusion.benchmark", *point.benchmark_args]


def _plan(point: Point, args: TaskArgs) -> str | None:
    """Give `point` its identity from the plan of its exact flags; the reason it cannot run
    otherwise."""
    from mlenergy.diffusion.inputs.config import ConfigError
    from mlenergy.diffusion.output import rundir
    from mlenergy.diffusion.sweep.grid import SweepError, plan_point

    task = next((a.split(":", 1)[1] for a in point.benchmark_args if a.startswith("workload:")),
                None)
    try:
        plan = plan_point(task, point.benchmark_args, point.nproc, args.device,
                          args.nproc_per_node)
    except (ConfigError, SweepError) as err:
        return str(err)
    if Path(plan.run_dir) != Path(point.run_dir):
        return (f"the benchmark flags name the run directory {plan.run_dir}, not "
                f"{point.run_dir}; emit the campaign again with the same sweep version")
    point.identity = rundir.identity(plan)
    return None


def _points(args: TaskArgs, benchmark_args: list[str]) -> list[Point]:
    """The task's points, each planned from its flags; ValueError says why they cannot run."""
    from mlenergy.diffusion.planning.shared_pipeline import split_points

    argvs = split_points(benchmark_args)
    if len(argvs) != len(args.run_dir):
        raise ValueError(f"{len(args.run_dir)} run director(ies) for {len(argvs)} point(s)")
    points = [point_of(run_dir, argv) for run_dir, argv in zip(args.run_dir, argvs)]
    for point in points:
        if point.nproc != args.nodes * args.nproc_per_node:
            raise ValueError(f"ulysses x ring = {point.nproc} but the task has {args.nodes} "
                             f"node(s) x {args.nproc_per_node} process(es)")
        problem = _plan(point, args)
        if problem is not None:
            raise ValueError(problem)
    return points


def main(argv: list[str] | None = None) -> int:
    import tyro

    own, benchmark_args = split_benchmark_args(sys.argv[1:] if argv is None else list(argv))
    args = tyro.cli(TaskArgs, args=own, use_underscores=True)
    try:
        points = _points(args, benchmark_args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    for point in points:
        if results_complete(results_path(point.run_dir), point):
            point.status = "already_done"
            print(f"already done: {point.run_dir}", flush=True)
    command = (local_command if args.nodes == 1
               else lambda p: multinode_command(p, args.nodes, args.nproc_per_node))
    settings = Settings(
        timeout_s=args.timeout_s, log=lambda p: log_path(args.out_dir, p), env=child_env(),
        command=command, shared_node_dir=sharing.node_dir(args.out_dir / "shared_node_runs"))
    stopped = run_points(points, settings, progress=lambda: None,
                         report=lambda line: print(line, flush=True))
    if stopped is not None:
        return 128 + stopped
    return 0 if all(p.status in ("done", "already_done") for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
