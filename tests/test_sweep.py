"""The sweep runner on tiny models: a grid completes, a rerun skips it, failures are survived."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from conftest import REPO, offline_env

FLUX = "black-forest-labs/FLUX.1-dev"
PIXART = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
LARGE = "stabilityai/stable-diffusion-3.5-large"
TINY = ["--workload.weights", "tiny", "--workload.height", "128", "--workload.width", "128",
        "--workload.inference_steps", "2", "--warmup_iters", "1", "--benchmark_iters", "2",
        "--no_save_images"]


def sweep(tmp_path: Path, *args: str, timeout: float = 600, **env: str):
    cmd = [sys.executable, "-m", "mlenergy.diffusion.sweep", *args]
    return subprocess.run(cmd, cwd=REPO, env=offline_env(tmp_path, **env), capture_output=True,
                          text=True, timeout=timeout)


def summary(out: Path) -> dict:
    return json.loads((out / "sweep_summary.json").read_text())


def by_status(doc: dict, status: str) -> list[dict]:
    return [p for p in doc["points"] if p["status"] == status]


def test_sweep_completes_then_a_rerun_skips_every_done_point_and_the_report_reads_it(tmp_path):
    out = tmp_path / "run"
    grid = ["--models", FLUX, PIXART, "--batch_sizes", "1", "2",
            "--parallel", "1x1", "2x1", "1x2", "3x1", "4x1", "--gpus", "3",
            "--out_dir", str(out), "--timeout_s", "240", "--", *TINY]
    first = sweep(tmp_path, *grid)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    doc = summary(out)
    assert doc["counts"] == {"done": 8, "already_done": 0, "skipped": 12, "failed": 0}
    # Every point shares one kernel cache, so compiled points reuse each other's graphs.
    assert doc["compile_cache"] == str((out / "compile_cache").resolve())
    done = by_status(doc, "done")
    assert {(p["model_id"], p["batch_size"], p["ulysses_degree"]) for p in done} == {
        (m, b, u) for m in (FLUX, PIXART) for b in (1, 2) for u in (1, 2)}
    for point in done:
        run_dir = Path(point["run_dir"])
        results = json.loads((run_dir / "results.json").read_text())
        assert results["num_processes"] == point["nproc"] == point["ulysses_degree"]
        assert results["batch_size"] == point["batch_size"] and results["num_iterations"] == 2
        # The run directory is the benchmark's own naming, under the sweep's tree.
        assert run_dir.parent == out / "diffusion" / "text-to-image" / point["model_id"]
        assert f"uly-{point['ulysses_degree']}+ring-1" in run_dir.name
        assert Path(point["log"]).is_file() and "--nproc_per_node" in point["command"]
    reasons = {(p["ulysses_degree"], p["ring_degree"]): p["reason"]
               for p in by_status(doc, "skipped")}
    assert "needs CUDA" in reasons[(1, 2)]
    assert "not divisible by --ulysses_degree 3" in reasons[(3, 1)]
    assert reasons[(4, 1)] == "needs 4 GPUs (processes); 3 available"
    assert "8 done, 0 already done, 12 skipped, 0 failed" in first.stdout

    stamps = {p["run_dir"]: os.stat(Path(p["run_dir"]) / "results.json").st_mtime_ns
              for p in done}
    start = time.monotonic()
    again = sweep(tmp_path, *grid)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - start < 30  # nothing was launched
    doc = summary(out)
    assert doc["counts"] == {"done": 0, "already_done": 8, "skipped": 12, "failed": 0}
    assert all(os.stat(Path(d) / "results.json").st_mtime_ns == t for d, t in stamps.items())

    report = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.report", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    table = pd.read_csv(out / "report" / "runs.csv")
    assert len(table) == 8 and pd.read_parquet(out / "report" / "runs.parquet").shape == table.shape
    for _, row in table.iterrows():
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert row["batch_latency_s"] == results["latency_per_iteration"]["mean"]
        assert row["throughput_per_s"] == results["throughput_images_per_sec"]
        assert pd.isna(row["energy_per_output_j"])  # CPU: not measured, never 0
    for model in ("FLUX.1-dev", "PixArt-Sigma-XL-2-1024-MS"):
        for kind in ("gpus", "throughput"):
            assert (out / "report" / f"{model}-{kind}.png").stat().st_size > 1000
        # No energy on CPU: no energy Pareto plot.
        assert not (out / "report" / f"{model}-pareto.png").exists()
    assert "| FLUX.1-dev |" in report.stdout and "J / image" in report.stdout


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "run"
    # Rank 1 exists only in the two-process point: it fails there, first; the next one runs.
    proc = sweep(tmp_path, "--models", FLUX, "--batch_sizes", "1", "--parallel", "2x1", "1x1",
                 "--out_dir", str(out), "--timeout_s", "240", "--retries", "1", "--", *TINY,
                 MLENERGY_FAIL_RANK="1")
    assert proc.returncode == 1, proc.stdout[-2000:]
    doc = summary(out)
    assert doc["counts"] == {"done": 1, "already_done": 0, "skipped": 0, "failed": 1}
    failed, = by_status(doc, "failed")
    assert failed["ulysses_degree"] == 2 and failed["reason"].startswith("exit status")
    # Retried once; the log keeps both attempts.
    log = Path(failed["log"]).read_text()
    assert failed["attempts"] == 2 and log.count("failure injected on rank 1") >= 2
    assert "=== attempt 1" in log and "=== attempt 2" in log
    assert not (Path(failed["run_dir"]) / "results.json").exists()
    done, = by_status(doc, "done")
    assert done["attempts"] == 1 and done["ulysses_degree"] == 1 and (Path(done["run_dir"]) / "results.json").exists()
    assert f"(log: {failed['log']})" in proc.stdout


def _processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if text in line and "pytest" not in line]


def test_a_hanging_point_is_killed_with_its_process_group(tmp_path):
    out = tmp_path / "hang-run"
    start = time.monotonic()
    proc = sweep(tmp_path, "--models", FLUX, "--batch_sizes", "1", "--parallel", "2x1",
                 "--out_dir", str(out), "--timeout_s", "3", "--", *TINY)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1
    failed, = by_status(summary(out), "failed")
    assert failed["reason"] == "timed out after 3 s; killed"
    # Neither torchrun nor its workers outlive the point.
    assert _processes_mentioning(str(out)) == []


def test_dry_run_prints_commands_and_creates_nothing(tmp_path):
    out = tmp_path / "run"
    proc = sweep(tmp_path, "--preset", "leaderboard", "--models", FLUX, LARGE, "--gpus", "8",
                 "--device", "cuda", "--out_dir", str(out), "--dry_run", "--",
                 "--workload.weights", "random")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    # 5 batch sizes x 10 degree pairs each; SD3.5-large's 38 heads rule out Ulysses 4 and 8.
    assert len(commands) == 5 * 10 + 5 * 7
    assert sum(f"--workload.model_id {FLUX} " in c and "--nproc_per_node=4 " in c
               for c in commands) == 5 * 3
    assert sum("has 38 attention heads, not divisible by --ulysses_degree" in line
               for line in lines) == 5 * 3
    assert not out.exists()


def test_bad_sweep_input_is_one_line_and_exit_2(tmp_path):
    proc = sweep(tmp_path, "--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1",
                 "--out_dir", str(tmp_path / "run"), "--", "--workload.batch_size", "4")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --workload.batch_size is set by the sweep")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_emitted_slurm_script_runs_each_pending_point_across_the_right_nodes(tmp_path):
    out = tmp_path / "run"
    proc = sweep(tmp_path, "--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1", "4x1",
                 "4x2", "--emit", "slurm", "--nodes", "2", "--gpus_per_node", "4",
                 "--out_dir", str(out), "--slurm_option=--partition=gpu", "--",
                 "--workload.weights", "random")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --partition=gpu" in script
    assert f"export TORCHINDUCTOR_CACHE_DIR={(out / 'compile_cache').resolve()}" in script
    (tmp_path / "sweep.sbatch").write_text(script)

    # Run it with stand-ins for Slurm and torchrun that log how they were called; the 1-GPU
    # point is already done and must not be launched.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    _stub(bin_dir / "scontrol", "printf 'gpu-a\\ngpu-b\\n'\n")
    _stub(bin_dir / "srun", 'echo "srun $*" >> "$CALLS"\n'
                            'while [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    _stub(bin_dir / "torchrun", 'echo "torchrun $*" >> "$CALLS"\n'
                                'while [[ $1 != --workload.base_dir ]]; do shift; done\n'
                                'mkdir -p "$2/fake" && exit 0\n')
    one_gpu = [line.split()[3] for line in script.splitlines() if line.startswith("point 1 1 ")]
    assert len(one_gpu) == 1
    Path(one_gpu[0]).mkdir(parents=True)
    (Path(one_gpu[0]) / "results.json").write_text("{}")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(calls),
               SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_JOB_ID="77")
    run = subprocess.run(["bash", str(tmp_path / "sweep.sbatch")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    # The stand-in torchrun writes no results.json: those points count as failed.
    assert run.returncode == 1 and "2 point(s) failed" in run.stdout, run.stdout + run.stderr
    assert f"already done: {one_gpu[0]}" in run.stdout
    srun4, torchrun4, srun8, torchrun8 = calls.read_text().splitlines()
    assert "--nodes=1" in srun4 and "--nodelist=gpu-a " in srun4
    assert "--nnodes=1 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=gpu-a:29500" \
        in torchrun4 and "--ulysses_degree 4 --ring_degree 1" in torchrun4
    # Eight GPUs: two nodes of four, meeting at the first node.
    assert "--nodes=2" in srun8 and "--nodelist=gpu-a,gpu-b " in srun8
    assert "--nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=gpu-a:29500" \
        in torchrun8 and "--ulysses_degree 4 --ring_degree 2" in torchrun8
