"""The sweep runner on tiny models: a packed grid completes, a rerun skips it, failures, timeouts
and signals stop a point with every process of it, bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, offline_env
from mlenergy.diffusion.results import files
from mlenergy.diffusion.sweep import main as sweep_main

FLUX = "black-forest-labs/FLUX.1-dev"
PIXART = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
LARGE = "stabilityai/stable-diffusion-3.5-large"
WAN = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
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


def counts(**nonzero: int) -> dict:
    base = dict.fromkeys(("done", "already_done", "skipped", "failed", "interrupted",
                          "not_run"), 0)
    return {**base, **nonzero}


def _overlap(a: dict, b: dict) -> float:
    return min(a["finished"], b["finished"]) - max(a["started"], b["started"])


def _check_packing(out: Path, done: list[dict]) -> None:
    # Packed: points ran side by side on disjoint device slots, and each knows which did.
    pairs = [(a, b) for a in done for b in done if a["run_dir"] < b["run_dir"]
             and _overlap(a, b) > 0]
    assert any(a["nproc"] == b["nproc"] == 1 for a, b in pairs), done
    for a, b in pairs:
        assert not set(a["devices"]) & set(b["devices"])
        assert b["run_dir"] in a["shared_node_with"] and a["run_dir"] in b["shared_node_with"]
    records = {json.loads(p.read_text())["run_dir"]: json.loads(p.read_text())
               for p in (out / "shared_node_runs").rglob("*.json")}
    assert set(records) == {str(Path(p["run_dir"]).resolve()) for p in done}
    assert all(r["finished"] > r["started"] for r in records.values())


def _check_the_report_of(out: Path) -> None:
    report = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.tools.report", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    table = pd.read_csv(out / "report" / "runs.csv")
    assert len(table) == 8 and pd.read_parquet(out / "report" / "runs.parquet").shape == table.shape
    for _, row in table.iterrows():
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert row["batch_latency_s"] == results["latency_per_iteration"]["mean"]
        assert row["throughput_per_s"] == results["throughput_images_per_sec"]
        assert pd.isna(row["energy_per_output_j"])  # CPU: not measured, never 0
        assert row["device"].startswith("CPU (") and row["weights"] == "tiny"
    plots = {p.name for p in (out / "report").glob("*.png")}
    for model in ("FLUX.1-dev", "PixArt-Sigma-XL-2-1024-MS"):
        for kind in ("gpus", "throughput"):
            assert sum(n.startswith(model) and n.endswith(f"-{kind}.png") for n in plots) == 1
    # No energy on CPU: no energy Pareto plot.
    assert not any(n.endswith("-pareto.png") for n in plots)
    assert "| FLUX.1-dev | CPU (" in report.stdout and "| tiny | float32 |" in report.stdout


def test_packed_sweep_completes_then_a_rerun_skips_every_done_point_and_the_report_reads_it(
        tmp_path):
    out = tmp_path / "run"
    grid = ["--models", FLUX, PIXART, "--batch_sizes", "1", "2",
            "--parallel", "1x1", "2x1", "1x2", "3x1", "4x1", "--gpus", "3", "--pack",
            "--one_point_per_process",
            "--out_dir", str(out), "--timeout_s", "300", "--", *TINY]
    old_umask = os.umask(0o022)
    try:
        first = sweep(tmp_path, *grid)
    finally:
        os.umask(old_umask)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    doc = summary(out)
    assert doc["counts"] == counts(done=8, skipped=12) and doc["pack"] is True
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
        assert run_dir.parent == out / "diffusion" / "text-to-image" / point["model_id"]
        assert f"uly-{point['ulysses_degree']}+ring-1" in run_dir.name
        assert Path(point["log"]).is_file() and len(point["devices"]) == point["nproc"]
        assert (run_dir / "results.json").stat().st_mode & 0o777 == 0o644
    one_process = [p for p in done if p["nproc"] == 1]
    assert all(p["command"].startswith(f"{sys.executable} -m mlenergy.diffusion.benchmark ")
               for p in one_process)
    assert all("--nproc_per_node=2 -m mlenergy.diffusion.benchmark" in p["command"]
               for p in done if p["nproc"] == 2)

    _check_packing(out, done)

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
    assert summary(out)["counts"] == counts(already_done=8, skipped=12)
    assert all(os.stat(Path(d) / "results.json").st_mtime_ns == t for d, t in stamps.items())

    _check_the_report_of(out)


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "run"
    # Rank 1 exists only in the two-process point: it fails there, first; the next one runs.
    proc = sweep(tmp_path, "--models", FLUX, "--batch_sizes", "1", "--parallel", "2x1", "1x1",
                 "--out_dir", str(out), "--timeout_s", "240", "--retries", "1", "--", *TINY,
                 MLENERGY_FAIL_RANK="1")
    assert proc.returncode == 1, proc.stdout[-2000:]
    doc = summary(out)
    assert doc["counts"] == counts(done=1, failed=1)
    failed, = by_status(doc, "failed")
    assert failed["ulysses_degree"] == 2 and failed["reason"].startswith("exit status")
    # Retried once; the log keeps both attempts.
    log = Path(failed["log"]).read_text()
    assert failed["attempts"] == 2 and log.count("failure injected on rank 1") >= 2
    assert "=== attempt 1" in log and "=== attempt 2" in log
    assert not (Path(failed["run_dir"]) / "results.json").exists()
    done, = by_status(doc, "done")
    assert done["attempts"] == 1 and done["ulysses_degree"] == 1
    assert (Path(done["run_dir"]) / "results.json").exists()
    assert f"(log: {failed['log']})" in proc.stdout


def _processes_mentioning(text: str, but: int | None = None) -> list[str]:
    """Processes (other than this test's and `but`) whose command line holds `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), but):
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in args:
            found.append(f"{entry} {args}")
    return found


def test_a_hanging_point_is_killed_with_every_process_it_started(tmp_path):
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_sweep_stops_its_running_point_for_good(tmp_path, sig):
    out = tmp_path / "run"
    many = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
            "--workload.inference_steps", "2", "--benchmark_iters", "2000", "--no_save_images"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes",
         "1", "--parallel", "2x1", "--out_dir", str(out), "--", *many],
        cwd=REPO, env=offline_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)  # a job of its own, as in a shell
    try:
        # requests.json is written once every rank has joined the process group.
        deadline = time.monotonic() + 240
        while not list(out.rglob("requests.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        # torchrun and its two workers (in sessions of their own).
        running = _processes_mentioning(str(out), but=proc.pid)
        assert len(running) >= 3
        # The point's launcher leads a session of its own, apart from the sweep's: the sweep can
        # stop the point's whole tree, and a terminal's Ctrl-C reaches the sweep alone.
        [launcher] = [int(line.split()[0]) for line in running if "torch.distributed.run" in line]
        assert os.getsid(launcher) == launcher != os.getsid(proc.pid)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # what Ctrl-C does: the whole foreground job
        else:
            proc.send_signal(sig)  # kill, or a scheduler ending the job
        stopped = time.monotonic()
        while _processes_mentioning(str(out), but=proc.pid) and time.monotonic() - stopped < 10:
            time.sleep(0.2)
        assert _processes_mentioning(str(out), but=proc.pid) == []
        assert proc.wait(timeout=20) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read()
    doc = summary(out)
    assert doc["counts"] == counts(interrupted=1) and doc["stopped_by"] == sig.name
    assert doc["points"][0]["reason"] == f"stopped by {sig.name}", output
    time.sleep(3)
    assert not list(out.rglob("results.json"))


def test_dry_run_prints_commands_and_creates_nothing(tmp_path):
    out = tmp_path / "run"
    proc = sweep(tmp_path, "--preset", "leaderboard", "--models", FLUX, LARGE, "--gpus", "8",
                 "--device", "cuda", "--out_dir", str(out), "--dry_run", "--",
                 "--workload.weights", "random")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    # One launch per model and degree pair, measuring its 5 batch sizes (`--then`); SD3.5-large's
    # 38 heads rule out Ulysses 4 and 8.
    assert len(commands) == 10 + 7
    assert all(c.count(" --then ") == 4 for c in commands)
    assert sum(f"--workload.model_id {FLUX} " in c and "--nproc_per_node=4 " in c
               for c in commands) == 3
    assert sum("has 38 attention heads, not divisible by --ulysses_degree" in line
               for line in lines) == 5 * 3
    assert lines[-1] == "# 85 point(s) to run in 17 launch(es) (78 GPU processes in all); " \
        "15 skipped"
    apart = sweep(tmp_path, "--preset", "leaderboard", "--models", FLUX, LARGE, "--gpus", "8",
                  "--device", "cuda", "--out_dir", str(out), "--dry_run",
                  "--one_point_per_process", "--", "--workload.weights", "random")
    assert len([line for line in apart.stdout.splitlines() if not line.startswith("#")]) \
        == 5 * 10 + 5 * 7
    assert not out.exists()


GRID = ["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1"]


@pytest.mark.parametrize("argv,message", [
    (["--models", "acme/nope", "--batch_sizes", "1", "--parallel", "1x1"],
     "unknown model id 'acme/nope'; known text-to-image models: "),
    (["--models", WAN, "--batch_sizes", "1", "--parallel", "1x1"],
     f"{WAN} is a text-to-video model; sweep it with --task text-to-video"),
    (["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x2", "--device", "cpu"],
     "no point of the grid can run (1 skipped), e.g. "),
    ([*GRID, "--timeout_s", "-5"], "--timeout_s must be a finite number of seconds above 0"),
    ([*GRID, "--timeout_s", "nan"], "--timeout_s must be a finite number of seconds above 0"),
    ([*GRID, "--timeout_s", "inf"], "--timeout_s must be a finite number of seconds above 0"),
    ([*GRID, "--retries", "-1"], "--retries must be at least 0, got -1"),
    (["--models", FLUX, FLUX, "--batch_sizes", "1", "--parallel", "1x1"],
     f"--models lists '{FLUX}' more than once"),
    (["--models", FLUX, "--batch_sizes", "1", "2", "1", "--parallel", "1x1"],
     "--batch_sizes lists 1 more than once"),
    (["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1", "2x1", "1x1"],
     "--parallel lists '1x1' more than once"),
    (["--models", FLUX, "--batch_sizes", "1", "--parallel", "2by1"],
     "--parallel '2by1' is not ULYSSESxRING"),
    ([*GRID, "--", "--workload.batch_size", "4"], "--workload.batch_size is set by the sweep"),
    ([*GRID, "--", "--workload.nope", "4"], "the benchmark has no flag --workload.nope"),
    ([*GRID, "--", "--warmup_iters", "many"], "the benchmark cannot parse --warmup_iters many"),
    ([*GRID, "--options=--warmup_iters 2", "--", "--warmup_iters", "3"],
     "--warmup_iters is given in --options and after `--`"),
    ([*GRID, "--", "--warmup_iters", "1", "--warmup_iters=2"],
     "--warmup_iters is given twice in --warmup_iters 1 --warmup_iters=2; give it once"),
    ([*GRID, "--partition", "gpu"], "--partition is a Slurm setting; add --emit slurm"),
    ([*GRID, "--pack", "--submit"], "--pack is for local runs"),
])
def test_bad_sweep_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    cut = argv.index("--") if "--" in argv else len(argv)
    assert sweep_main([*argv[:cut], "--out_dir", str(out), *argv[cut:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_out_dir_and_summary_that_cannot_be_written_are_refused(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert sweep_main([*GRID, "--out_dir", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --out_dir {a_file} is a file; pass a "
                                               "directory")
    for summary_path in (tmp_path, a_file / "summary.json"):
        assert sweep_main([*GRID, "--out_dir", str(tmp_path / "run"), "--summary",
                           str(summary_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: --summary {summary_path} cannot be written as a file; pass a "
                       "file path in a directory")
    assert not (tmp_path / "run").exists()


def test_json_files_get_the_umask_mode_and_stay_atomic(tmp_path):
    path = tmp_path / "deep" / "results.json"
    old = os.umask(0o022)
    try:
        files.write_json_atomically(path, {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        files.write_json_atomically(path, {"a": 2})
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    # A write that fails half-way leaves the previous file whole and no temporary behind.
    with pytest.raises(TypeError):
        files.write_json_atomically(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_the_readme_documents_every_sweep_and_report_flag():
    import dataclasses

    from mlenergy.diffusion.sweep.command_line import SweepArgs
    from mlenergy.diffusion.tools.report import ReportArgs

    readme = (REPO / "README.md").read_text()
    flags = [f"--{f.name}" for f in dataclasses.fields(SweepArgs)]
    flags += [f"--{f.name}" for f in dataclasses.fields(ReportArgs) if f.name != "run_dir"]
    missing = [flag for flag in flags
               if f"`{flag}" not in readme and f"`{flag.replace('--', '--no_', 1)}" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_a_reused_pid_never_makes_a_stranger_part_of_a_point(monkeypatch):
    """PID reuse cannot be provoked on demand, so the process table is given: the point's
    launcher (pid 100, started at tick 5) with a worker, then pid 100 reused by an unrelated
    process (started at tick 9) with a child of its own."""
    from mlenergy.diffusion.sweep import process_tree as process

    tables = iter([
        {100: (1, "S", "5"), 101: (100, "S", "6")},
        {100: (1, "S", "5"), 101: (100, "S", "6")},
        {100: (7, "S", "9"), 102: (100, "S", "10"), 101: (1, "S", "6")},
    ])
    monkeypatch.setattr(process, "_process_table", lambda: next(tables))
    tree = process.ProcessTree(100)
    assert tree.known == {100: "5", 101: "6"}
    # The orphaned worker is still the point's; the stranger on pid 100 and its child are not.
    assert tree.alive() == [101]
