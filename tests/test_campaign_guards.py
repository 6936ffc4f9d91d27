"""A campaign never counts a point as done that is not, and never measures into a directory that
a live run on another host holds.

- Exit 0 is not done: a point whose launch exits 0 without complete results of its own
  configuration (nothing written, a truncated file, missing iterations, results of another
  configuration) is recorded as failed by the local sweep, by the Slurm task and by the runner
  they share; results of the point's own configuration are done.
- Locks across hosts: a lock held by a live run on another host (its heartbeat fresh) makes the
  local sweep and the Slurm task refuse the point without starting anything, and makes a second
  sweep of the same tree refuse in one line; a lock whose heartbeat stopped is taken over and the
  point measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, offline_env
from mlenergy.diffusion.output.rundir import RunDirLock
from mlenergy.diffusion.sweep import grid as grid_module
from mlenergy.diffusion.sweep.command_line import SweepArgs, make_grid
from mlenergy.diffusion.sweep.local import Settings, log_path, run_points

FLUX = "black-forest-labs/FLUX.1-dev"
TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
        "--workload.inference_steps", "2", "--warmup_iters", "1", "--benchmark_iters", "2",
        "--no_save_images", "--no_count_flops", "--idle_baseline_s", "0"]
OTHER_HOST = "node-b"

# Makes every benchmark process exit 0 at once, having written nothing: what a benchmark that
# wrongly believes it has nothing to do looks like from the sweep.
EXITS_0 = '''
import os
with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
    if b"mlenergy.diffusion.benchmark" in f.read():
        os._exit(0)
'''


def _env(tmp_path: Path, exits_0: bool = False, **extra: str) -> dict:
    env = offline_env(tmp_path, **extra)
    paths = [env.get("PYTHONPATH"), str(REPO)]
    if exits_0:
        hook = tmp_path / "exits-0"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(EXITS_0)
        paths.insert(0, str(hook))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def _sweep(tmp_path: Path, out: Path, *args: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--parallel", "1x1",
         "--device", "cpu", "--out_dir", str(out), *args, "--", *TINY],
        cwd=REPO, env=env or _env(tmp_path), capture_output=True, text=True, timeout=600)


def _points(out: Path, batch_sizes: list[int]):
    """The sweep's own points of the grid, planned as the sweep plans them."""
    args = SweepArgs(models=(FLUX,), batch_sizes=tuple(batch_sizes), parallel=("1x1",),
                     out_dir=out, device="cpu")
    grid = make_grid(args, TINY)
    points = grid_module.make_points(grid)
    grid_module.resolve(points, grid, gpus=1, device_type="cpu")
    assert all(p.status == "pending" for p in points)
    return points


def _task(tmp_path: Path, out: Path, point, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.sweep.slurm_task", "--out_dir", str(out),
         "--run_dir", str(point.run_dir), "--device", "cpu", "--timeout_s", "300", "--",
         *point.benchmark_args],
        cwd=REPO, env=env or _env(tmp_path), capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------- exit 0 is not done

# What a launch that exits 0 leaves in its run directory, and whether that makes it done.
LEAVES = {
    1: ("nothing", False),
    2: ("a truncated results.json", False),
    3: ("fewer iterations than it says", False),
    4: ("results of another configuration", False),
    5: ("results of its own configuration", True),
}

WRITER = '''
import json, pathlib, sys
run_dir, text = pathlib.Path(sys.argv[1]), sys.argv[2]
if text:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(text)
'''


def _left(point) -> str:
    complete = {"model_id": FLUX, "batch_size": point.batch_size, "num_iterations": 2,
                "iterations": [{}, {}], "total_time": 1.5, "run_identity": point.identity}
    what = LEAVES[point.batch_size][0]
    if what == "nothing":
        return ""
    if what == "a truncated results.json":
        return json.dumps(complete)[:-40]
    if what == "fewer iterations than it says":
        return json.dumps({**complete, "iterations": [{}]})
    if what == "results of another configuration":
        return json.dumps({**complete, "run_identity": {**point.identity, "warmup_iters": 3}})
    return json.dumps(complete)


def test_a_point_that_exits_0_is_done_only_with_complete_results_of_its_configuration(tmp_path):
    out = tmp_path / "run"
    points = _points(out, list(LEAVES))
    # One launch per point: each writes what its point's case leaves behind.
    settings = Settings(timeout_s=120, log=lambda p: log_path(out, p), one_point_per_process=True,
                        command=lambda launch: [sys.executable, "-c", WRITER,
                                                str(launch.run_dir), _left(launch.points[0])])
    assert run_points(points, settings, progress=lambda: None, report=lambda line: None) is None
    for point in points:
        what, done = LEAVES[point.batch_size]
        assert point.status == ("done" if done else "failed"), what
        if not done:
            assert point.reason == "exited 0 but wrote no complete results.json", what


def test_the_sweep_and_the_slurm_task_record_an_exit_0_without_results_as_failed(tmp_path):
    out = tmp_path / "run"
    env = _env(tmp_path, exits_0=True)
    proc = _sweep(tmp_path, out, "--batch_sizes", "1", env=env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    point, = json.loads((out / "sweep_summary.json").read_text())["points"]
    assert point["status"] == "failed"
    assert point["reason"] == "exited 0 but wrote no complete results.json"

    task_point, = _points(tmp_path / "slurm-run", [2])
    task = _task(tmp_path, tmp_path / "slurm-run", task_point, env=env)
    assert task.returncode == 1, task.stdout + task.stderr
    assert "failed (exited 0 but wrote no complete results.json)" in task.stdout


# ----------------------------------------------------------------------- locks across hosts

def _foreign_lock(run_dir: Path, age_s: float) -> Path:
    """The lock of a run on another host whose heartbeat last touched it `age_s` ago."""
    lock = RunDirLock(run_dir).path
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": 4242, "host": OTHER_HOST, "process_start": "1",
                                "since": "2026-12-01T00:00:00"}))
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    return lock


def _nothing_started(out: Path, point, lock: Path, held: str) -> None:
    assert lock.read_text() == held  # still the other host's
    assert not point.run_dir.exists()
    assert not list((out / "sweep_logs").rglob("*.log"))  # never launched
    assert not list(out.rglob("shared_node_runs/*/*.json"))


@pytest.mark.parametrize("runner", ["local sweep", "slurm task"])
def test_a_live_lock_of_another_host_refuses_the_point_without_starting_it(runner, tmp_path):
    out = tmp_path / "run"
    point, = _points(out, [1])
    lock = _foreign_lock(point.run_dir, age_s=5)
    held = lock.read_text()
    env = _env(tmp_path, MLENERGY_LOCK_STALE_S="120")
    holder = f"{point.run_dir} is held by a live run (PID 4242 on {OTHER_HOST} since "
    if runner == "local sweep":
        proc = _sweep(tmp_path, out, "--batch_sizes", "1", env=env)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
        recorded, = json.loads((out / "sweep_summary.json").read_text())["points"]
        assert recorded["status"] == "failed" and recorded["reason"].startswith(holder)
    else:
        proc = _task(tmp_path, out, point, env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert holder in proc.stdout
    _nothing_started(out, point, lock, held)


def test_a_lock_of_another_host_without_heartbeat_is_taken_over_by_the_slurm_task(tmp_path):
    out = tmp_path / "run"
    point, = _points(out, [1])
    lock = _foreign_lock(point.run_dir, age_s=600)
    proc = _task(tmp_path, out, point, env=_env(tmp_path, MLENERGY_LOCK_STALE_S="120"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    log, = (out / "sweep_logs").rglob("*.log")
    assert f"Taking over the lock {lock} of PID 4242 on {OTHER_HOST}" in log.read_text()
    assert not lock.exists() and (point.run_dir / "results.json").is_file()


def test_a_second_sweep_of_a_tree_swept_from_another_host_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = _foreign_lock(out / "sweep", age_s=5)
    proc = _sweep(tmp_path, out, "--batch_sizes", "1",
                  env=_env(tmp_path, MLENERGY_LOCK_STALE_S="120"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"is being swept by another sweep (PID 4242 on {OTHER_HOST}" in proc.stderr
    assert lock.exists() and not (out / "sweep_summary.json").exists()
    assert not list(out.rglob("*.log"))
