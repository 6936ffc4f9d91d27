"""A campaign as Slurm job arrays: one array per (nodes, GPUs per node) shape, each task asking
for exactly its GPUs, CPUs and memory, so that the scheduler packs small points onto shared nodes.

Every task runs `python -m mlenergy.diffusion.sweep.slurm_task`, which skips a point whose results.json
is complete: resubmitting an array runs only what is missing. Paths are as the sweep was given
them; relative ones are relative to the directory the arrays are submitted from.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlenergy.diffusion.inputs.task import TEXT_TO_IMAGE, task_named
from mlenergy.diffusion.sweep.groups import Group, make_groups
from mlenergy.diffusion.sweep.point import Point

# Slurm's default MaxArraySize is 1001 (task ids 0..1000): bigger groups become several arrays.
MAX_ARRAY_TASKS = 1000
HEREDOC_END = "MLENERGY_ARRAY"


class SubmitError(RuntimeError):
    pass


@dataclass(frozen=True)
class SlurmSettings:
    out_dir: Path
    timeout_s: float
    gpus_per_node: int = 8
    cpus_per_gpu: int = 8
    mem_per_gpu: str | None = "64G"
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    array_limit: int | None = None
    extra: tuple[str, ...] = ()
    compile_cache: Path | None = None
    # The device the points were planned for (their identities assume it): cuda on a GPU
    # cluster; cpu where the campaign is tested.
    device: str = "cuda"
    # One task per point instead of one per group of points sharing a pipeline.
    one_point_per_process: bool = False


@dataclass(frozen=True)
class JobArray:
    nodes: int
    gpus_per_node: int
    # One task per group (its points measured one after another by one launch).
    tasks: tuple[Group, ...]
    part: int = 0

    task: str = TEXT_TO_IMAGE.name

    @property
    def name(self) -> str:
        """Task and GPUs within squeue's default name width of 8: img-1gpu, vid-8gpu,
        img-2x8g (two nodes of 8), then -2, -3 for the further parts of a big array."""
        kind = "vid" if task_named(self.task).is_video else "img"
        shape = (f"{self.gpus_per_node}gpu" if self.nodes == 1
                 else f"{self.nodes}x{self.gpus_per_node}g")
        return f"{kind}-{shape}" + (f"-{self.part + 1}" if self.part else "")

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(p for group in self.tasks for p in group.points)

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPU{'s' if self.gpus_per_node > 1 else ''}"
        where = f"{self.nodes} nodes x {gpus}" if self.nodes > 1 else gpus
        tasks = f" in {len(self.tasks)} task(s)" if len(self.tasks) != len(self.points) else ""
        return f"{self.name}: {len(self.points)} point(s){tasks} of {where}"


def shape(point: Point, gpus_per_node: int) -> tuple[int, int]:
    """(nodes, GPUs per node): one node when it fits, else whole nodes."""
    nodes = max(1, math.ceil(point.nproc / gpus_per_node))
    return nodes, point.nproc // nodes


def _task_of(point: Point) -> str:
    return next((a.split(":", 1)[1] for a in point.benchmark_args if a.startswith("workload:")),
                TEXT_TO_IMAGE.name)


def job_arrays(points: list[Point], gpus_per_node: int,
               one_point_per_process: bool = False) -> list[JobArray]:
    """The pending points' launches (sweep/groups.py), one array per shape."""
    shapes: dict[tuple[int, int], list[Group]] = {}
    for group in make_groups(points, one_point_per_process):
        shapes.setdefault(shape(group.points[0], gpus_per_node), []).append(group)
    arrays = []
    for (nodes, per_node), members in sorted(shapes.items(), key=lambda kv: kv[0][0] * kv[0][1]):
        for part, i in enumerate(range(0, len(members), MAX_ARRAY_TASKS)):
            arrays.append(JobArray(nodes, per_node, tuple(members[i:i + MAX_ARRAY_TASKS]), part,
                                   _task_of(members[0].points[0])))
    return arrays


def _scaled_memory(per_gpu: str, gpus: int) -> str:
    number, unit = re.fullmatch(r"(\d+)([KMGT]?)", per_gpu.upper()).groups()
    return f"{int(number) * gpus}{unit}"


def _sbatch_lines(array: JobArray, s: SlurmSettings) -> list[str]:
    n = len(array.tasks)
    lines = [f"--job-name={array.name}",
             f"--array=0-{n - 1}" + (f"%{s.array_limit}" if s.array_limit else ""),
             f"--nodes={array.nodes}", "--ntasks-per-node=1",
             f"--gres=gpu:{array.gpus_per_node}",
             f"--cpus-per-task={array.gpus_per_node * s.cpus_per_gpu}"]
    if s.mem_per_gpu:
        lines.append(f"--mem={_scaled_memory(s.mem_per_gpu, array.gpus_per_node)}")
    for flag, value in (("--partition", s.partition), ("--account", s.account),
                        ("--time", s.time_limit)):
        if value:
            lines.append(f"{flag}={value}")
    lines.append(f"--output={_sbatch_quote(str(s.out_dir / 'sweep_logs' / 'slurm'))}"
                 "/%x-%A_%a.out")
    return [f"#SBATCH {line}" for line in lines + list(s.extra)]


def _sbatch_quote(value: str) -> str:
    """A value for an #SBATCH line, which sbatch splits at white space outside double quotes
    (no shell runs there, so shell quoting does not apply)."""
    if '"' in value or "\n" in value or "\r" in value:
        raise SubmitError(f"{value!r}: a path for Slurm may hold neither a double quote nor a "
                          "line break")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _array_task_flags(array: JobArray, s: SlurmSettings) -> list[str]:
    return ["--out_dir", str(s.out_dir), "--nodes", str(array.nodes),
            "--nproc_per_node", str(array.gpus_per_node), "--device", s.device,
            "--timeout_s", repr(float(s.timeout_s))]


def array_script(array: JobArray, s: SlurmSettings) -> str:
    lines = ["#!/bin/bash", *_sbatch_lines(array, s),
             f"# {array.describe()}. Each task skips a point whose results.json is complete.",
             "# A task of several points measures them one after another in one launch.",
             "set -euo pipefail", "export PYTHONUNBUFFERED=1"]
    if s.compile_cache is not None:
        cache = shlex.quote(str(s.compile_cache))
        lines.append(f"export TORCHINDUCTOR_CACHE_DIR={cache}" if s.compile_cache.is_absolute()
                     else f'export TORCHINDUCTOR_CACHE_DIR="$PWD"/{cache}')
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for i, group in enumerate(array.tasks):
        task = ["--run_dir", *(str(p.run_dir) for p in group.points), "--",
                *group.benchmark_args]
        lines.append(f"  {i}) set -- {shlex.join(task)} ;;")
    lines += ['  *) echo "no point for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
              'exec "${MLENERGY_PYTHON:-python3}" -m mlenergy.diffusion.sweep.slurm_task '
              + shlex.join(_array_task_flags(array, s)) + ' "$@"', ""]
    return "\n".join(lines)


def _skipped_lines(points: list[Point]) -> list[str]:
    """One line per reason (the leaderboard grid skips dozens of points for a handful)."""
    reasons: dict[str, list[Point]] = {}
    for p in points:
        if p.status == "skipped":
            reasons.setdefault(p.reason, []).append(p)
    lines = []
    for reason, members in reasons.items():
        degrees = sorted({f"{p.ulysses_degree}x{p.ring_degree}" for p in members})
        batches = sorted({p.batch_size for p in members})
        lines.append(f"# skipped {len(members)} point(s) ({' '.join(degrees)}; batch "
                     f"{' '.join(map(str, batches))}): {reason}")
    return lines


def campaign_script(points: list[Point], s: SlurmSettings, sweep_argv: list[str]) -> str:
    """A bash script that submits every array (sbatch reads each from a here-document) and
    prints their job ids."""
    arrays = job_arrays(points, s.gpus_per_node, s.one_point_per_process)
    pending = sum(len(a.points) for a in arrays)
    out = ["#!/usr/bin/env bash",
           f"# ML.ENERGY diffusion campaign: {pending} point(s) in {len(arrays)} Slurm job "
           "array(s), written by",
           f"#   mlenergy-diffusion sweep {shlex.join(sweep_argv)}",
           "# Run it with bash from the directory the sweep ran in (relative paths start "
           "there).",
           "# It submits each array and prints its job id; run it again to resume: tasks skip",
           "# points whose results.json is complete."]
    out += [f"#   {a.describe()}" for a in arrays]
    out += _skipped_lines(points)
    done = sum(p.status == "already_done" for p in points)
    out += [f"# already done: {done} point(s)"] if done else []
    logs = shlex.quote(str(s.out_dir / "sweep_logs" / "slurm"))
    out += ["set -euo pipefail",
            f"mkdir -p {logs}",
            "# Each job id is also appended to jobs.jsonl there, with the array's name.",
            f"jobs={logs}/jobs.jsonl",
            'submit() { local id; id=$(sbatch --parsable); id=${id%%;*}; echo "$1: job $id"',
            '  printf \'{"submitted": "%s", "array": "%s", "job_id": "%s"}\\n\' '
            '"$(date -Iseconds)" "${1%%:*}" "$id" >> "$jobs"; }']
    for array in arrays:
        out += [f"submit {shlex.quote(array.describe())} <<'{HEREDOC_END}'",
                array_script(array, s).rstrip("\n"), HEREDOC_END]
    return "\n".join(out) + "\n"


def submit(points: list[Point], s: SlurmSettings, report=print) -> list[str]:
    """sbatch every array; returns the job ids. Each array's script and job id are kept in
    sweep_logs/slurm (campaign.record_submission)."""
    from mlenergy.diffusion.sweep import campaign

    (s.out_dir / "sweep_logs" / "slurm").mkdir(parents=True, exist_ok=True)
    ids = []
    for array in job_arrays(points, s.gpus_per_node, s.one_point_per_process):
        script = array_script(array, s)
        try:
            proc = subprocess.run(["sbatch", "--parsable"], input=script,
                                  capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise SubmitError("sbatch is not on PATH: --submit needs Slurm's client tools; "
                              "print the campaign with --emit slurm instead") from None
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.split())[:300]
            raise SubmitError(f"sbatch refused {array.name}: {detail}"
                              + (f" (submitted before it: {', '.join(ids)})" if ids else ""))
        job_id = proc.stdout.strip().split(";")[0]
        ids.append(job_id)
        kept = campaign.record_submission(s.out_dir, array.name, job_id, script,
                                          [str(p.run_dir) for p in array.points])
        report(f"{array.describe()}: job {job_id} (script: {kept})")
    return ids
