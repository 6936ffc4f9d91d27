"""Run a grid of benchmark points, one torchrun each, and survive the ones that fail.

    python -m mlenergy.diffusion.sweep --models M... --batch_sizes B... --parallel UxR... \
        [--options "FLAGS"]... [-- BENCHMARK FLAGS FOR EVERY POINT]
    python -m mlenergy.diffusion.sweep --preset leaderboard -- --workload.weights random

Every point is validated with the benchmark's own `make_plan` for its process count before
anything launches, so invalid points are reported as skipped with the benchmark's reason. A
point whose run directory already holds results.json is not run again. A point that fails or
outlives `--timeout_s` (its whole process group is killed) is recorded with its log, and the
sweep goes on; the exit status is 1 if any point failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from mlenergy.diffusion import files, presets
from mlenergy.diffusion.config import parse_cli
from mlenergy.diffusion.plan import ConfigError, default_base_dir, make_plan

BENCHMARK = Path(__file__).with_name("benchmark.py")
RESULTS = files.RESULTS

# Set by the grid itself; the same flag among the common benchmark flags would be ambiguous.
GRID_FLAGS = ("--ulysses_degree", "--ring_degree", "--workload.model_id",
              "--workload.batch_size", "--workload.base_dir")

# After SIGTERM, how long torchrun gets to stop its workers before the group is SIGKILLed.
KILL_GRACE_S = 15


@dataclass
class Point:
    model_id: str
    batch_size: int
    ulysses_degree: int
    ring_degree: int
    options: str
    benchmark_args: list[str]
    run_dir: Path | None = None
    status: str = "pending"  # done | already_done | skipped | failed
    reason: str | None = None
    log: Path | None = None
    seconds: float | None = None
    attempts: int = 0
    command: list[str] = field(default_factory=list)

    @property
    def nproc(self) -> int:
        return self.ulysses_degree * self.ring_degree

    def label(self) -> str:
        opts = f" [{self.options}]" if self.options else ""
        return (f"{self.model_id} batch {self.batch_size} ulysses {self.ulysses_degree} x ring "
                f"{self.ring_degree}{opts}")

    def to_json(self) -> dict:
        doc = asdict(self)
        for key in ("run_dir", "log"):
            doc[key] = None if doc[key] is None else str(doc[key])
        doc["command"] = shlex.join(self.command) if self.command else None
        doc["nproc"] = self.nproc
        del doc["benchmark_args"]
        return doc


class SweepError(ValueError):
    """Bad sweep input: one line that says what is wrong and how to fix it."""


def _parallel_pair(text: str) -> tuple[int, int]:
    try:
        u, r = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ULYSSESxRING (e.g. 2x1 for Ulysses 2, ring 1)") from None
    if u < 1 or r < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: degrees must be at least 1")
    return u, r


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlenergy.diffusion.sweep",
        description="Run a grid of benchmark points (models x batch sizes x ulysses/ring x "
                    "options), one torchrun per point with nproc = ulysses x ring. Flags after "
                    "`--` go to every point's benchmark (e.g. -- --workload.weights random).",
    )
    p.add_argument("--preset", choices=sorted(presets.PRESETS),
                   help="; ".join(f"{p.name}: {p.description}" for p in presets.PRESETS.values())
                   + " (mlenergy/diffusion/presets.py); explicit --models/--batch_sizes/--parallel "
                     "override it")
    p.add_argument("--task", choices=("text-to-image", "text-to-video"), default="text-to-image")
    p.add_argument("--models", nargs="+", metavar="MODEL_ID")
    p.add_argument("--batch_sizes", nargs="+", type=int, metavar="B")
    p.add_argument("--parallel", nargs="+", type=_parallel_pair, metavar="UxR",
                   help="(ulysses, ring) degrees, e.g. 1x1 2x1 1x2")
    p.add_argument("--options", action="append", metavar="FLAGS",
                   help="one set of benchmark flags per point variant; repeat for more (e.g. "
                        "--options= --options=--use_torch_compile). Default: one empty set")
    p.add_argument("--out_dir", type=Path, default=Path("run"),
                   help="root of the run tree: points go to OUT_DIR/diffusion/<task>/<model>/"
                        "<params>, logs to OUT_DIR/sweep_logs (default: run)")
    p.add_argument("--summary", type=Path,
                   help="where the sweep summary JSON goes (default: OUT_DIR/sweep_summary.json)")
    p.add_argument("--gpus", type=int,
                   help="GPUs available (processes, without CUDA); points needing more are "
                        "skipped. Default: visible CUDA GPUs, else CPU cores; with --emit slurm, "
                        "--nodes x --gpus_per_node")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="device the points are validated for (auto: this machine's; cuda "
                        "with --emit slurm)")
    p.add_argument("--timeout_s", type=float, default=3600.0,
                   help="a point running longer is killed (its whole process group) and "
                        "recorded as failed")
    p.add_argument("--retries", type=int, default=0,
                   help="run a point that failed (not one that timed out) up to this many more "
                        "times, for transient faults in long sweeps")
    p.add_argument("--compile_cache", type=Path,
                   help="inductor's kernel cache for every point (TORCHINDUCTOR_CACHE_DIR), so "
                        "points that compile the same graphs reuse them; put it on a shared file "
                        "system for Slurm. Default: OUT_DIR/compile_cache, unless "
                        "TORCHINDUCTOR_CACHE_DIR is set already")
    p.add_argument("--dry_run", action="store_true",
                   help="print each point's command (or why it is skipped); run nothing")
    p.add_argument("--emit", choices=("slurm",),
                   help="print a Slurm batch script that runs the pending points, instead of "
                        "running them")
    p.add_argument("--nodes", type=int, default=1, help="--emit slurm: nodes in the allocation")
    p.add_argument("--gpus_per_node", type=int, default=8,
                   help="--emit slurm: GPUs per node (default 8)")
    p.add_argument("--slurm_option", action="append", default=[], metavar="OPT",
                   help="--emit slurm: an extra #SBATCH line, e.g. --slurm_option=--partition=gpu")
    p.add_argument("benchmark_args", nargs=argparse.REMAINDER,
                   help="after `--`: benchmark flags for every point")
    return p


def _common_args(raw: list[str]) -> list[str]:
    args = raw[1:] if raw[:1] == ["--"] else raw
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in GRID_FLAGS:
            raise SweepError(f"{name} is set by the sweep grid; drop it from the flags after `--` "
                             "(use --models, --batch_sizes, --parallel, --out_dir)")
        if arg.startswith("workload:"):
            raise SweepError(f"{arg}: the subcommand comes from --task; drop it after `--`")
    return args


def make_points(ns: argparse.Namespace) -> list[Point]:
    preset = presets.for_task(ns.preset, ns.task)
    models = ns.models or preset.get("models")
    batch_sizes = ns.batch_sizes or preset.get("batch_sizes")
    parallel = ns.parallel or preset.get("parallel")
    missing = [flag for flag, v in (("--models", models), ("--batch_sizes", batch_sizes),
                                    ("--parallel", parallel)) if not v]
    if missing:
        raise SweepError(f"no {', '.join(missing)} given; name them, or use --preset leaderboard")
    if any(b < 1 for b in batch_sizes):
        raise SweepError(f"--batch_sizes must be at least 1, got {batch_sizes}")
    common = _common_args(ns.benchmark_args)
    option_sets = ns.options or [""]
    points = []
    for model_id in models:
        for options in option_sets:
            for u, r in parallel:
                for batch in batch_sizes:
                    base = default_base_dir(ns.task, model_id, ns.out_dir)
                    argv = ["--ulysses_degree", str(u), "--ring_degree", str(r),
                            *shlex.split(options), f"workload:{ns.task}",
                            "--workload.model_id", model_id, "--workload.batch_size", str(batch),
                            "--workload.base_dir", str(base),
                            *preset.get("flags", {}).get(model_id, ()), *common]
                    points.append(Point(model_id, batch, u, r, options.strip(), argv))
    return points


def _parse_benchmark_args(argv: list[str]):
    """The benchmark's own parser on a point's flags; its complaint becomes one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return parse_cli(argv)
    except SystemExit:
        lines = [line.strip(" │╭╮╰╯─-") for line in captured.getvalue().splitlines()]
        lines = [line for line in lines if line and not line.startswith("For full helptext")]
        detail = " ".join(lines[1:] if len(lines) > 1 else lines)[:300]
        raise SweepError(f"the benchmark rejects the flags after `--`: {detail}") from None


def resolve(points: list[Point], gpus: int, device_type: str, gpus_per_node: int | None = None
            ) -> None:
    """Give every point its run directory, or the reason it is skipped."""
    for point in points:
        config = _parse_benchmark_args(point.benchmark_args)
        if point.nproc > gpus:
            point.status = "skipped"
            point.reason = f"needs {point.nproc} GPUs (processes); {gpus} available"
            continue
        if gpus_per_node and point.nproc > gpus_per_node and point.nproc % gpus_per_node:
            point.status = "skipped"
            point.reason = (f"{point.nproc} processes do not fill whole nodes of "
                            f"{gpus_per_node} GPUs")
            continue
        try:
            plan = make_plan(config, world_size=point.nproc, device_type=device_type,
                             visible_gpus=max(gpus, point.nproc))
        except ConfigError as err:
            point.status, point.reason = "skipped", str(err)
            continue
        point.run_dir = plan.run_dir
        if (plan.run_dir / RESULTS).exists():
            point.status, point.reason = "already_done", f"{plan.run_dir / RESULTS} exists"


def local_command(point: Point) -> list[str]:
    # --standalone: a private rendezvous on a free local port, so points never collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={point.nproc}", str(BENCHMARK), *point.benchmark_args]


def compile_cache_dir(ns: argparse.Namespace) -> Path | None:
    """The kernel cache the points share; None where the caller's environment already names
    one (theirs is kept)."""
    if ns.compile_cache is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    return (ns.compile_cache or ns.out_dir / "compile_cache").resolve()


def _child_env(compile_cache: Path | None = None) -> dict:
    env = dict(os.environ)
    if compile_cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
    # A sweep started from inside a torchrun must not hand its own rank to the points.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    return env


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_point(point: Point, log: Path, timeout_s: float,
              compile_cache: Path | None = None) -> None:
    point.command = local_command(point)
    point.log = log
    point.attempts += 1
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # A retry appends, so the log keeps why the earlier attempt failed.
    with open(log, "w" if point.attempts == 1 else "a") as out:
        out.write(f"=== attempt {point.attempts}\n")
        out.write(f"$ {shlex.join(point.command)}\n")
        out.flush()
        # Its own session: a hung point is ended with every process it started.
        proc = subprocess.Popen(point.command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_child_env(compile_cache),
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        except BaseException:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            # Workers that outlived their launcher must not hold GPUs for the next point.
            _kill_group(proc.pid, signal.SIGKILL)
    point.seconds = time.monotonic() - start
    if code is None:
        point.status, point.reason = "failed", f"timed out after {timeout_s:g} s; killed"
    elif code != 0:
        point.status, point.reason = "failed", f"exit status {code}"
    elif not (point.run_dir / RESULTS).exists():
        point.status, point.reason = "failed", "exited 0 but wrote no results.json"
    else:
        point.status, point.reason = "done", None


def _indented_tail(log: Path, lines: int = 15) -> str:
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in tail)


def _log_path(out_dir: Path, point: Point) -> Path:
    return out_dir / "sweep_logs" / point.run_dir.relative_to(out_dir).parent / (
        point.run_dir.name + ".log")


def summarize(points: list[Point]) -> dict:
    counts = {s: sum(p.status == s for p in points)
              for s in ("done", "already_done", "skipped", "failed")}
    return {"counts": counts, "points": [p.to_json() for p in points]}


def print_summary(points: list[Point], summary_path: Path | None) -> None:
    print("\nSweep summary")
    for p in points:
        extra = f": {p.reason}" if p.reason and p.status != "already_done" else ""
        log = f" (log: {p.log})" if p.status == "failed" else ""
        print(f"  {p.status:<12} {p.label()}{extra}{log}")
    counts = summarize(points)["counts"]
    print("  " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()))
    if summary_path is not None:
        print(f"  summary: {summary_path}")


def slurm_script(points: list[Point], ns: argparse.Namespace) -> str:
    """A batch script that runs the pending points inside one allocation, one srun each."""
    g = ns.gpus_per_node
    lines = [
        "#!/bin/bash",
        "# Written by `python -m mlenergy.diffusion.sweep --emit slurm`. Submit from the",
        "# repository root with the environment that has the benchmark installed.",
        "#SBATCH --job-name=mlenergy-sweep",
        f"#SBATCH --nodes={ns.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={g}",
        "#SBATCH --exclusive",
        "#SBATCH --output=slurm-%j.out",
        *(f"#SBATCH {opt}" for opt in ns.slurm_option),
        "set -uo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        "export PYTHONUNBUFFERED=1",
        *([f"export TORCHINDUCTOR_CACHE_DIR={shlex.quote(str(compile_cache_dir(ns)))}"]
          if compile_cache_dir(ns) is not None else []),
        f"TIMEOUT_S={math.ceil(ns.timeout_s)}",
        "PORT=${MLENERGY_RDZV_PORT:-29500}",
        "failed=0 n=0",
        "# point NODES NPROC_PER_NODE RUN_DIR LOG BENCHMARK_FLAGS...",
        "point() {",
        "  local nodes=$1 per_node=$2 run_dir=$3 log=$4; shift 4",
        '  if [ -f "$run_dir/results.json" ]; then echo "already done: $run_dir"; return; fi',
        "  n=$((n + 1))",
        '  local hosts head',
        '  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n "$nodes")',
        '  head=$(echo "$hosts" | head -n 1)',
        '  mkdir -p "$(dirname "$log")"',
        '  echo "running: $run_dir ($nodes node(s) x $per_node)"',
        '  timeout --kill-after=30 "$TIMEOUT_S" srun --nodes="$nodes" --ntasks="$nodes" \\',
        '      --ntasks-per-node=1 --nodelist="$(echo "$hosts" | paste -sd,)" \\',
        '    torchrun --nnodes="$nodes" --nproc_per_node="$per_node" --rdzv_backend=c10d \\',
        '      --rdzv_endpoint="$head:$PORT" --rdzv_id="mlenergy-$SLURM_JOB_ID-$n" \\',
        f'      {BENCHMARK.relative_to(Path.cwd()) if BENCHMARK.is_relative_to(Path.cwd()) else BENCHMARK} "$@" > "$log" 2>&1',
        "  local rc=$?",
        '  if [ $rc -ne 0 ] || [ ! -f "$run_dir/results.json" ]; then',
        '    echo "FAILED (exit $rc): $run_dir, log: $log"; failed=$((failed + 1))',
        "  fi",
        "}",
        "",
    ]
    for p in points:
        if p.status == "skipped":
            lines.append(f"# skipped: {p.label()}: {p.reason}")
            continue
        nodes = max(1, math.ceil(p.nproc / g))
        lines.append(shlex.join(["point", str(nodes), str(p.nproc // nodes), str(p.run_dir),
                                 str(_log_path(ns.out_dir, p)), *p.benchmark_args]))
    lines += ["", 'echo "sweep finished: $failed point(s) failed"', "[ $failed -eq 0 ]", ""]
    return "\n".join(lines)


def _default_gpus(ns: argparse.Namespace, device_type: str) -> int:
    if ns.gpus is not None:
        return ns.gpus
    if ns.emit == "slurm":
        return ns.nodes * ns.gpus_per_node
    if device_type == "cuda":
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        points = make_points(ns)
        if ns.device == "auto":
            if ns.emit == "slurm":
                device_type = "cuda"
            else:
                import torch

                device_type = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device_type = ns.device
        gpus = _default_gpus(ns, device_type)
        resolve(points, gpus, device_type, ns.gpus_per_node if ns.emit == "slurm" else None)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if ns.emit == "slurm":
        print(slurm_script(points, ns), end="")
        return 0
    if ns.dry_run:
        for p in points:
            if p.status == "pending":
                print(shlex.join(local_command(p)))
            else:
                print(f"# {p.status.replace('_', ' ')}: {p.label()}: {p.reason}")
        return 0

    summary_path = ns.summary or ns.out_dir / "sweep_summary.json"
    compile_cache = compile_cache_dir(ns)
    started = datetime.now()
    pending = [p for p in points if p.status == "pending"]

    def write_summary() -> None:
        doc = {"started": started.isoformat(timespec="seconds"),
               "finished": datetime.now().isoformat(timespec="seconds"),
               "out_dir": str(ns.out_dir), "device": device_type, "gpus": gpus,
               "timeout_s": ns.timeout_s,
               "compile_cache": str(compile_cache) if compile_cache else None,
               **summarize(points)}
        files.write_json_atomically(summary_path, doc)

    try:
        for i, point in enumerate(pending, 1):
            print(f"[{i}/{len(pending)}] {point.label()} -> {point.run_dir}", flush=True)
            run_point(point, _log_path(ns.out_dir, point), ns.timeout_s, compile_cache)
            while (point.status == "failed" and point.attempts <= ns.retries
                   and not point.reason.startswith("timed out")):
                print(f"    failed ({point.reason}); attempt {point.attempts + 1}", flush=True)
                run_point(point, point.log, ns.timeout_s, compile_cache)
            status = point.status + (f" ({point.reason})" if point.reason else "")
            print(f"    {status} in {point.seconds:.1f} s", flush=True)
            if point.status == "failed":
                print(_indented_tail(point.log), flush=True)
            write_summary()
    finally:
        write_summary()
    print_summary(points, summary_path)
    return 1 if any(p.status == "failed" for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
