"""Campaigns as Slurm job arrays: what the emitted arrays ask for, and a tiny-model campaign run
by a real Slurm (slurmctld + slurmd on this machine, see slurm_cluster.py)."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, offline_env
from mlenergy.diffusion.output import rundir
from mlenergy.diffusion.output.rundir import RunDirLock
from mlenergy.diffusion.planning.shared_pipeline import split_points
from mlenergy.diffusion.sweep import main as sweep_main
from mlenergy.diffusion.sweep.grid import plan_point
from mlenergy.diffusion.sweep.point import Point, results_complete
from slurm_cluster import Cluster, ensure_installed

FLUX = "black-forest-labs/FLUX.1-dev"
PIXART = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
        "--workload.inference_steps", "1", "--warmup_iters", "1", "--benchmark_iters", "3",
        "--no_save_images", "--no_count_flops", "--idle_baseline_s", "0"]
# One task per point: the tests of this campaign follow single points (a grouped campaign has
# its own test below).
GRID = ["--models", FLUX, PIXART, "--batch_sizes", "1", "2", "--parallel", "1x1", "2x1",
        "--one_point_per_process", "--device", "cpu", "--gpus", "2", "--gpus_per_node", "2", "--cpus_per_gpu", "1",
        "--mem_per_gpu", "100M", "--time_limit", "15:00", "--timeout_s", "600"]
CAMPAIGN_TIMEOUT_S = 900


@dataclass
class Array:
    sbatch: dict[str, str]
    exec_flags: list[str]
    tasks: list[list[str]] = field(default_factory=list)

    def task_points(self, args: list[str]) -> list[Point]:
        """A task's points: its run directories (after --run_dir) and their flags (after --,
        joined by --then)."""
        run_dirs = args[args.index("--run_dir") + 1:args.index("--")]
        benches = split_points(args[args.index("--") + 1:])
        assert len(run_dirs) == len(benches), args
        return [self._point(Path(d), bench) for d, bench in zip(run_dirs, benches)]

    def _point(self, run_dir: Path, bench: list[str]) -> Point:
        value = {bench[i]: bench[i + 1] for i in range(len(bench) - 1)}
        point = Point(value["--workload.model_id"], int(value["--workload.batch_size"]),
                      int(value["--ulysses_degree"]), int(value["--ring_degree"]), "", bench,
                      run_dir=run_dir)
        # What the task itself plans: the identity its results must hold.
        device = self.exec_flags[self.exec_flags.index("--device") + 1]
        plan = plan_point(bench[0].split(":", 1)[1], bench, point.nproc, device)
        point.identity = rundir.identity(plan)
        return point

    @property
    def points(self) -> list[Point]:
        return [p for t in self.tasks for p in self.task_points(t)]


def parse_campaign(script: str) -> list[Array]:
    """The arrays of an emitted campaign: #SBATCH options, the task runner's flags, each task's
    arguments."""
    arrays: list[Array] = []
    for line in script.splitlines():
        if line.startswith("#!/bin/bash"):
            arrays.append(Array({}, []))
        elif line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            arrays[-1].sbatch[key] = value
        elif m := re.match(r"  \d+\) set -- (.*) ;;$", line):
            arrays[-1].tasks.append(shlex.split(m.group(1)))
        elif line.startswith("exec "):
            arrays[-1].exec_flags = shlex.split(line)[4:-1]
    return arrays


def _emit(capsys, *argv: str) -> str:
    assert sweep_main(list(argv)) == 0
    return capsys.readouterr().out


def test_leaderboard_arrays_request_exactly_the_gpus_of_their_tasks(capsys):
    script = _emit(capsys, "--preset", "leaderboard", "--device", "cuda", "--gpus", "8",
                   "--emit", "slurm", "--", "--workload.weights", "random")
    arrays = parse_campaign(script)
    assert [a.sbatch["--gres"] for a in arrays] == ["gpu:1", "gpu:2", "gpu:4", "gpu:8"]
    # 10 image models x 5 batch sizes x 10 (Ulysses, ring) pairs, less the 90 points that
    # cannot run (heads not divisible by the degree; SDXL has no sequence parallelism); one
    # task measures a model's 5 batch sizes at one pair.
    assert sum(len(a.points) for a in arrays) == 410
    assert sum(len(a.tasks) for a in arrays) == 410 // 5
    assert script.count("\n# skipped ") == 7
    for array in arrays:
        gpus = int(array.sbatch["--gres"].removeprefix("gpu:"))
        assert {p.nproc for p in array.points} == {gpus}
        assert array.sbatch["--nodes"] == "1" and array.sbatch["--ntasks-per-node"] == "1"
        assert array.sbatch["--cpus-per-task"] == str(8 * gpus)
        assert array.sbatch["--mem"] == f"{64 * gpus}G"
        assert array.sbatch["--array"] == f"0-{len(array.tasks) - 1}"
        assert array.exec_flags[array.exec_flags.index("--nproc_per_node") + 1] == str(gpus)
    # Relative paths only: the script runs wherever it is submitted from.
    assert str(Path.cwd()) not in script and "\n#SBATCH --output=run/sweep_logs/slurm/" in script
    assert "# skipped 45 point(s)" in script  # SDXL has no sequence parallelism


def test_multi_node_points_ask_for_whole_nodes_and_the_slurm_settings_are_written(capsys):
    script = _emit(capsys, "--models", FLUX, "--batch_sizes", "1", "--parallel", "2x1", "8x2",
                   "4x4", "--device", "cuda", "--gpus", "16", "--array_limit", "3",
                   "--partition", "gpu", "--account", "energy", "--time_limit", "2:00:00",
                   "--slurm_option=--qos=high", "--mem_per_gpu", "None", "--emit", "slurm",
                   "--", "--workload.weights", "random")
    one_node, two_nodes = parse_campaign(script)
    assert one_node.sbatch["--gres"] == "gpu:2" and one_node.sbatch["--array"] == "0-0%3"
    assert two_nodes.sbatch["--nodes"] == "2" and two_nodes.sbatch["--gres"] == "gpu:8"
    assert two_nodes.sbatch["--array"] == "0-1%3" and len(two_nodes.tasks) == 2
    assert two_nodes.exec_flags[:4] == ["--out_dir", "run", "--nodes", "2"]
    for array in (one_node, two_nodes):
        assert array.sbatch["--partition"] == "gpu" and array.sbatch["--account"] == "energy"
        assert array.sbatch["--time"] == "2:00:00" and array.sbatch["--qos"] == "high"
        assert "--mem" not in array.sbatch


# ---------------------------------------------------------------- a real Slurm, a tiny campaign

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_installed()
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@dataclass
class Campaign:
    work: Path
    env: dict
    script: Path
    arrays: list[Array]
    job_ids: list[str]
    broken_run_dir: Path
    # Held by this test process, as by another run measuring that point right now.
    blocker: RunDirLock

    def sweep(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.sweep", *GRID, *extra,
                               "--", *TINY], cwd=self.work, env=self.env, capture_output=True,
                              text=True, timeout=300)

    def submit_script(self) -> list[str]:
        proc = subprocess.run(["bash", str(self.script)], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return re.findall(r": job (\d+)$", proc.stdout, re.M)

    def results(self, point: Point) -> Path:
        return self.work / point.run_dir / "results.json"


def _wait(cluster: Cluster, campaign_work: Path) -> None:
    try:
        cluster.wait(CAMPAIGN_TIMEOUT_S)
    except TimeoutError:
        logs = "\n".join(p.read_text()[-2000:] for p in campaign_work.rglob("*.out"))
        raise AssertionError(f"campaign did not finish:\n{logs}\n{cluster.logs()}") from None


@pytest.fixture(scope="module")
def campaign(cluster, tmp_path_factory):
    """The tiny campaign emitted, one point's run directory held by another live run (its lock
    names this process), submitted with the emitted script, and waited for."""
    work = tmp_path_factory.mktemp("campaign")
    env = offline_env(work, MLENERGY_PYTHON=sys.executable, SLURM_CONF=str(cluster.conf),
                      PATH=cluster.env["PATH"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    old_umask = os.umask(0o022)
    try:
        emit = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.sweep", *GRID, "--emit",
                               "slurm", "--", *TINY], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert emit.returncode == 0, emit.stderr
        script = work / "campaign.sh"
        script.write_text(emit.stdout)
        arrays = parse_campaign(emit.stdout)
        broken = work / arrays[0].points[1].run_dir
        blocker = RunDirLock(broken)
        blocker.acquire()
        c = Campaign(work, env, script, arrays, [], broken, blocker)
        c.job_ids = c.submit_script()
        _wait(cluster, work)
    finally:
        os.umask(old_umask)
    return c


def _window(results: dict) -> tuple[float, float]:
    """From the run's start (results' `date`, whole seconds) to the end of its measurement."""
    start = datetime.datetime.strptime(results["date"], "%Y%m%d-%H%M%S").timestamp()
    return start, results["timeline"]["benchmark_end_time"]


def test_a_campaign_runs_as_right_sized_array_tasks_side_by_side_past_a_failing_point(
        campaign, cluster):
    one_gpu, two_gpu = campaign.arrays
    assert one_gpu.sbatch["--gres"] == "gpu:1" and two_gpu.sbatch["--gres"] == "gpu:2"
    assert {p.nproc for p in one_gpu.points} == {1} and {p.nproc for p in two_gpu.points} == {2}
    assert len(one_gpu.tasks) == len(two_gpu.tasks) == 4 and len(campaign.job_ids) == 2

    # The point whose run directory another run holds failed; every other one completed.
    states = {i: cluster.task_states(job) for i, job in enumerate(campaign.job_ids)}
    assert states[0][1] == ("FAILED", "1:0")
    assert all(s == ("COMPLETED", "0:0") for i, s in states[0].items() if i != 1)
    assert all(s == ("COMPLETED", "0:0") for s in states[1].values())
    broken = one_gpu.points[1]
    # The task did not even start it: its run directory is held by a live run.
    out, = (campaign.work / "run" / "sweep_logs" / "slurm").glob(
        f"*-{campaign.job_ids[0]}_1.out")
    assert f"{broken.run_dir} is held by a live run (PID {os.getpid()}" in out.read_text()
    assert not campaign.broken_run_dir.exists()
    windows = {}
    for array in (one_gpu, two_gpu):
        for point in array.points:
            if point.run_dir == broken.run_dir:
                continue
            path = campaign.results(point)
            assert results_complete(path, point), path
            doc = json.loads(path.read_text())
            assert doc["num_processes"] == point.nproc and doc["num_iterations"] == 3
            assert (path.parent / "requests.json").is_file()
            assert (path.parent / "driver_log.txt").is_file()
            # Readable by others under umask 022 (files the benchmark writes atomically).
            for name in ("results.json", "requests.json"):
                assert (path.parent / name).stat().st_mode & 0o777 == 0o644
            if point.nproc == 1:
                windows[point.run_dir] = _window(doc)

    # Two 1-GPU tasks of the array ran at the same time, on different GPUs of the node.
    overlapping = [(a, b) for a in windows for b in windows if str(a) < str(b)
                   and min(windows[a][1], windows[b][1]) - max(windows[a][0], windows[b][0]) > 1]
    assert overlapping, windows
    records = [json.loads(p.read_text())
               for p in (campaign.work / "run" / "shared_node_runs").rglob("*.json")]
    # Keyed by task/org/model/params: the params folder alone repeats across models.
    devices = {Path(r["run_dir"]).parts[-4:]: r["devices"] for r in records}
    a, b = (devices[Path(run_dir).parts[-4:]] for run_dir in overlapping[0])
    assert a != b and {*a, *b} == {"0", "1"}
    assert all(r["finished"] is not None and r["slurm_job"] for r in records)


def test_resubmitting_runs_only_what_is_missing_then_nothing(campaign, cluster):
    campaign.blocker.release()
    again = campaign.sweep("--submit")
    assert again.returncode == 0, again.stderr
    assert "1 point(s) to run, 7 already done" in again.stdout
    assert len(re.findall(r": job \d+ \(script: ", again.stdout)) == 1
    _wait(cluster, campaign.work)
    points = [p for a in campaign.arrays for p in a.points]
    assert all(results_complete(campaign.results(p), p) for p in points)
    stamps = {p.run_dir: campaign.results(p).stat().st_mtime_ns for p in points}

    # The first script again: every task finds its point complete and runs nothing.
    ids = campaign.submit_script()
    _wait(cluster, campaign.work)
    for job in ids:
        assert set(cluster.task_states(job).values()) == {("COMPLETED", "0:0")}
    outs = [p.read_text() for job in ids
            for p in (campaign.work / "run" / "sweep_logs" / "slurm").glob(f"*-{job}_*.out")]
    assert len(outs) == 8 and all(out.startswith("already done: run/") for out in outs)
    assert {p.run_dir: campaign.results(p).stat().st_mtime_ns for p in points} == stamps

    nothing = campaign.sweep("--submit")
    assert nothing.returncode == 0 and "nothing to submit" in nothing.stdout
    assert cluster.jobs_in_queue() == []


def test_a_multi_node_task_is_one_srun_of_torchrun_per_node_meeting_on_the_batch_node(
        monkeypatch):
    from mlenergy.diffusion.sweep.slurm_task import multinode_command

    for key, value in (("SLURMD_NODENAME", "gpu-a"), ("SLURM_JOB_ID", "77"),
                       ("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_CPUS_PER_TASK", "64")):
        monkeypatch.setenv(key, value)
    bench = ["workload:text-to-image", "--ulysses_degree", "8", "--ring_degree", "2"]
    command = multinode_command(Point(FLUX, 1, 8, 2, "", bench), nodes=2, per_node=8)
    assert command[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                           "--kill-on-bad-exit=1", "--cpus-per-task=64"]
    launcher = command[command.index("torch.distributed.run") + 1:]
    assert launcher[:3] == ["--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d"]
    assert re.fullmatch(r"--rdzv_endpoint=gpu-a:\d+", launcher[3])
    assert launcher[4:] == ["--rdzv_id=mlenergy-77-3", "-m", "mlenergy.diffusion.benchmark",
                            *bench]


# ---------------------------------------------- points sharing a pipeline: one task, one launch

def test_a_grouped_campaign_measures_a_models_batch_sizes_in_one_task(cluster, tmp_path):
    env = offline_env(tmp_path, MLENERGY_PYTHON=sys.executable, SLURM_CONF=str(cluster.conf),
                      PATH=cluster.env["PATH"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    grid = ["--models", FLUX, "--batch_sizes", "1", "2", "4", "--parallel", "1x1",
            *GRID[GRID.index("--device"):]]

    def sweep(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.sweep", *grid, *extra,
                               "--", *TINY], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    emitted = sweep("--emit", "slurm")
    assert emitted.returncode == 0, emitted.stderr
    array, = parse_campaign(emitted.stdout)
    assert len(array.tasks) == 1 and [p.batch_size for p in array.points] == [1, 2, 4]
    assert "1 task(s)" in emitted.stdout and "3 point(s)" in emitted.stdout
    submitted = sweep("--submit")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    _wait(cluster, tmp_path)
    job, = re.findall(r": job (\d+) \(script: ", submitted.stdout)
    assert cluster.task_states(job) == {0: ("COMPLETED", "0:0")}
    docs = []
    for point in array.points:
        path = tmp_path / point.run_dir / "results.json"
        assert results_complete(path, point), path
        docs.append(json.loads(path.read_text()))
    assert [(d["startup"]["group_size"], d["startup"]["group_position"]) for d in docs] == [
        (3, 1), (3, 2), (3, 3)]
    # One launch: the three points never shared the node with each other.
    assert all(d["shared_node_runs"] == [] for d in docs)
    nothing = sweep("--submit")
    assert nothing.returncode == 0 and "nothing to submit" in nothing.stdout


# ------------------------------------- the leaderboard-v3 preset under Slurm, paths with spaces

def test_the_v3_preset_completes_under_slurm_from_a_directory_with_spaces(cluster, tmp_path):
    from test_campaign import V3_TINY, V3_TINY_EXTRA

    from mlenergy.diffusion.sweep import presets

    work = tmp_path / "a campaign"
    work.mkdir()
    env = offline_env(work, MLENERGY_PYTHON=sys.executable, SLURM_CONF=str(cluster.conf),
                      PATH=cluster.env["PATH"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    slurm_flags = ["--device", "cpu", "--gpus", "2", "--gpus_per_node", "2", "--cpus_per_gpu",
                   "1", "--mem_per_gpu", "200M", "--time_limit", "15:00", "--out_dir", "run dir"]

    def submit(task: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlenergy.diffusion.sweep", "--preset", "leaderboard-v3",
             "--task", task, "--batch_sizes", "1", "--parallel", "1x1", *slurm_flags, "--submit",
             "--", *V3_TINY, *V3_TINY_EXTRA[task]],
            cwd=work, env=env, capture_output=True, text=True, timeout=300)

    models = {task: len(presets.PRESETS["leaderboard-v3"].models_of(task))
              for task in presets.TASKS}
    job_ids = []
    for task in presets.TASKS:
        proc = submit(task)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{models[task]} point(s) to run" in proc.stdout
        job_ids += re.findall(r": job (\d+)", proc.stdout)
    _wait(cluster, work)
    for job in job_ids:
        states = cluster.task_states(job)
        assert set(states.values()) == {("COMPLETED", "0:0")}, states
    results = list((work / "run dir").rglob("results.json"))
    assert len(results) == sum(models.values())
    submitted = [json.loads(line) for line in
                 (work / "run dir" / "sweep_logs" / "slurm" / "jobs.jsonl").read_text().splitlines()]
    assert sorted(s["job_id"] for s in submitted) == sorted(job_ids)
    assert all(Path(work / s["script"]).is_file() for s in submitted)
    assert {s["array"] for s in submitted} == {"img-1gpu", "vid-1gpu"}
    # Every point landed where the sweep looks for it: nothing is left to submit.
    for task in presets.TASKS:
        again = submit(task)
        assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout


def test_a_line_break_in_a_campaign_path_or_option_is_refused(tmp_path):
    for flags in (["--out_dir", "run\necho injected"],
                  ["--slurm_option=--qos=high\necho injected"]):
        proc = subprocess.run(
            [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes",
             "1", "--parallel", "1x1", "--device", "cuda", "--gpus", "1", "--emit", "slurm",
             *flags, "--", "--workload.weights", "random"],
            cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True,
            timeout=120)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "line break" in proc.stderr
