"""Packing and node sharing, seen from outside the sweep.

Two multi-process points of one packed sweep run side by side on scripted GPUs: the environment
of every process the sweep started (logged by a `sitecustomize` of the test's) shows that each
point's ranks got their own CUDA_VISIBLE_DEVICES slice and their own rendezvous, and each
results.json lists the other point, and only it, as having shared its node. The sweep runs with a
relative --out_dir on purpose: a run directory given as a relative path must still be known as
the run's own.

Which runs a results.json lists: a real run whose node-sharing directory holds records planted
around its measured window (one planted while the window is open) lists those that overlapped
it (ended inside it, or started inside it and still running) and not those entirely before or
after it, nor one left unfinished by a runner that is gone, nor its own record; and points of an
unpacked sweep, one after the other, list nobody.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, offline_env, with_flags, write_gpu_script
from mlenergy.diffusion.inputs.config import parse_cli
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch

FLUX = "black-forest-labs/FLUX.1-dev"
TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
        "--workload.inference_steps", "2", "--warmup_iters", "1", "--benchmark_iters", "2",
        "--no_save_images", "--no_count_flops", "--idle_baseline_s", "0"]
POWER_W = 250.0

# Imported by every Python process started with this directory on PYTHONPATH: one line per
# process with its command line and the environment that decides its devices and rendezvous.
OBSERVER = '''
import json, os
_log = os.environ.get("GUARDS_PROCESS_LOG")
if _log:
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\\0") if a]
    keys = ("CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
            "RANK", "LOCAL_RANK", "WORLD_SIZE", "MLENERGY_SHARED_NODE_RUNS")
    with open(_log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": argv,
                            **{k: os.environ.get(k) for k in keys}}) + "\\n")
'''


def _env(tmp_path: Path, **extra: str) -> dict:
    """The suite's environment, with this checkout importable from any working directory."""
    env = offline_env(tmp_path, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (env.get("PYTHONPATH"), str(REPO))))
    return env


def _observed_env(tmp_path: Path, **extra: str) -> tuple[dict, Path]:
    observer = tmp_path / "observer"
    observer.mkdir()
    (observer / "sitecustomize.py").write_text(OBSERVER)
    log = tmp_path / "processes.jsonl"
    env = _env(tmp_path, GUARDS_PROCESS_LOG=str(log), **extra)
    env["PYTHONPATH"] = os.pathsep.join((str(observer), env["PYTHONPATH"]))
    return env, log


def _sweep(cwd: Path, env: dict, *args: str, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.sweep", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _ranks_by_batch(log: Path) -> dict[int, list[dict]]:
    """The benchmark's ranks the sweep started (processes torchrun gave a RANK), by the batch
    size of their point."""
    ranks: dict[int, list[dict]] = {}
    for line in log.read_text().splitlines():
        proc = json.loads(line)
        argv = proc["argv"]
        if proc["RANK"] is None or "mlenergy.diffusion.benchmark" not in argv:
            continue
        batch = int(argv[argv.index("--workload.batch_size") + 1])
        ranks.setdefault(batch, []).append(proc)
    return ranks


def _overlap(a: dict, b: dict) -> float:
    return min(a["finished"], b["finished"]) - max(a["started"], b["started"])


def test_two_packed_multi_process_points_get_their_own_gpus_and_rendezvous_and_know_of_each_other(
        tmp_path):
    script = write_gpu_script(tmp_path / "gpus.json", power_w=POWER_W)
    env, log = _observed_env(tmp_path, MLENERGY_FAKE_GPUS=str(script))
    proc = _sweep(tmp_path, env, "--models", FLUX, "--batch_sizes", "1", "2", "--parallel", "2x1",
                  "--device", "cpu", "--gpus", "4", "--pack", "--one_point_per_process",
                  "--out_dir", "run", "--timeout_s", "500", "--", *TINY)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "sweep_summary.json").read_text())
    points = {p["batch_size"]: p for p in doc["points"]}
    assert sorted(points) == [1, 2] and {p["status"] for p in points.values()} == {"done"}
    one, two = points[1], points[2]
    # Side by side, on two disjoint slices of the four slots.
    assert _overlap(one, two) > 0, (one, two)
    assert len(one["devices"]) == len(two["devices"]) == 2
    assert not set(one["devices"]) & set(two["devices"])
    assert set(one["devices"]) | set(two["devices"]) == {"0", "1", "2", "3"}
    assert one["shared_node_with"] == [two["run_dir"]]
    assert two["shared_node_with"] == [one["run_dir"]]
    assert not Path(one["run_dir"]).is_absolute()  # the relative --out_dir, as given

    node_dir = (tmp_path / "run" / "shared_node_runs" / socket.gethostname().split(".")[0])
    ranks = _ranks_by_batch(log)
    assert sorted(ranks) == [1, 2], ranks
    rendezvous = {}
    for batch, point in points.items():
        procs = ranks[batch]
        # Each point's two ranks, each seeing exactly its point's slice.
        assert sorted(p["RANK"] for p in procs) == ["0", "1"], procs
        assert {p["CUDA_VISIBLE_DEVICES"] for p in procs} == {",".join(point["devices"])}
        assert {p["WORLD_SIZE"] for p in procs} == {"2"}
        assert {p["MLENERGY_SHARED_NODE_RUNS"] for p in procs} == {str(node_dir)}
        # One rendezvous per point, shared by its own ranks only.
        ends = {(p["MASTER_ADDR"], p["MASTER_PORT"], p["TORCHELASTIC_RUN_ID"]) for p in procs}
        assert len(ends) == 1, ends
        rendezvous[batch] = ends.pop()
    assert rendezvous[1][1] != rendezvous[2][1], rendezvous  # ports
    assert rendezvous[1][2] != rendezvous[2][2], rendezvous  # run ids

    for batch, other in ((1, two), (2, one)):
        run_dir = tmp_path / points[batch]["run_dir"]
        results = json.loads((run_dir / "results.json").read_text())
        # Measured on the point's own two scripted GPUs.
        assert results["num_gpus"] == 2 and results["energy_measured"] is True
        assert set(results["energy_measurement"]["gpu_energy"]) == {"0", "1"}
        shared = results["shared_node_runs"]
        assert [r["run_dir"] for r in shared] == [str((tmp_path / other["run_dir"]).resolve())]
        assert shared[0]["devices"] == other["devices"]
        assert shared[0]["host"] == socket.gethostname()


# ------------------------------------------------------------------ which runs shared a node

def _record(directory: Path, name: str, run_dir: Path, started: float,
            finished: float | None, pid: int, host: str | None = None) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps({
        "run_dir": str(run_dir), "host": host or socket.gethostname(), "devices": ["9"],
        "pid": pid, "slurm_job": None, "started": started, "finished": finished}))
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def test_a_run_lists_the_runs_that_overlapped_its_window_and_no_other(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    # A relative base directory: the run's own record names it by its absolute path.
    args = with_flags(["workload:t2i", "--workload.model_id", FLUX, "--workload.base_dir",
                       "base", *TINY], "--benchmark_iters", "3")
    own = tmp_path / make_plan(parse_cli(args), Launch()).run_dir
    others = tmp_path / "base-of-others"
    launched = time.time()
    _record(records, "before", others / "before", launched - 300, launched - 200, 1)
    _record(records, "after", others / "after", launched + 3600, launched + 3700, 1)
    _record(records, "gone", others / "gone", launched - 100, None, _dead_pid())
    _record(records, "own", own, launched - 1, None, os.getpid())
    # Each fence of the scripted GPU takes 0.3 s: the window stays open long enough for the
    # records planted during it.
    script = write_gpu_script(tmp_path / "gpus.json", power_w=POWER_W, sync_delay_s={"0": 0.3})
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlenergy.diffusion.benchmark", *args], cwd=tmp_path,
            env=_env(tmp_path, MLENERGY_SHARED_NODE_RUNS=str(records),
                     MLENERGY_FAKE_GPUS=str(script)),
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(log, "iteration 0:", proc)  # the measured window is open
        now = time.time()
        _record(records, "ended-inside", others / "ended-inside", launched - 100, now, 1)
        _record(records, "started-inside", others / "started-inside", now, None, os.getpid())
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    results = json.loads((own / "results.json").read_text())
    listed = sorted(Path(r["run_dir"]).name for r in results["shared_node_runs"])
    assert listed == ["ended-inside", "started-inside"], results["shared_node_runs"]


def test_points_run_one_after_the_other_did_not_share_the_node(tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "run"
    proc = _sweep(tmp_path, env, "--models", FLUX, "--batch_sizes", "1", "2", "--parallel",
                  "1x1", "--device", "cpu", "--gpus", "1", "--out_dir", str(out), "--", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "sweep_summary.json").read_text())
    assert [p["status"] for p in doc["points"]] == ["done", "done"]
    first, second = doc["points"]
    assert first["finished"] <= second["started"]
    records = list((out / "shared_node_runs").rglob("*.json"))
    assert len(records) == 2  # both were recorded, finished
    for point in doc["points"]:
        assert point["shared_node_with"] == []
        results = json.loads((Path(point["run_dir"]) / "results.json").read_text())
        assert results["shared_node_runs"] == [], results["shared_node_runs"]
