"""A sweep survives its operator: a closed terminal or `kill -9` of the sweep leaves nothing of
its point running and nothing published, a resume measures the point once; GPU slot lists that
would deadlock or share a GPU, two sweeps on one tree, two points with one run directory, a
failure to record a point, and flags given twice are each one line, never a hang or an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, offline_env
from mlenergy.diffusion.sweep import main as sweep_main
from test_sweep import _processes_mentioning, counts, summary

FLUX = "black-forest-labs/FLUX.1-dev"
TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
        "--workload.inference_steps", "2", "--warmup_iters", "1", "--benchmark_iters", "2",
        "--no_save_images", "--no_count_flops", "--idle_baseline_s", "0"]


def _start_sweep(tmp_path: Path, out: Path, *grid: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes",
         "1", *grid, "--out_dir", str(out), "--", *TINY],
        cwd=REPO, env=offline_env(tmp_path, **env), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_hang(proc: subprocess.Popen, out: Path, ranks: int) -> None:
    """Until the point's rank 0 sleeps in its first measured iteration (its log says so)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        logs = list((out / "sweep_logs").rglob("*.log"))
        if logs and "hang injected" in logs[0].read_text(errors="replace"):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the point never reached its measured iterations")
    assert len(_processes_mentioning(str(out), but=proc.pid)) >= ranks


@pytest.mark.parametrize("how", ["SIGHUP to the group", "SIGKILL to the sweep"])
def test_a_sweep_killed_or_hung_up_takes_its_point_with_it_and_a_resume_measures_it_once(
        how, tmp_path):
    out = tmp_path / "run"
    proc = _start_sweep(tmp_path, out, "--parallel", "2x1", MLENERGY_HANG_RANK="0")
    try:
        _wait_for_hang(proc, out, ranks=3)
        if how.startswith("SIGHUP"):
            os.killpg(proc.pid, signal.SIGHUP)  # a closed terminal
        else:
            proc.kill()
        stopped = time.monotonic()
        while _processes_mentioning(str(out), but=proc.pid) and time.monotonic() - stopped < 15:
            time.sleep(0.2)
        assert _processes_mentioning(str(out), but=proc.pid) == []
        code = proc.wait(timeout=20)
        assert code == (128 + signal.SIGHUP if how.startswith("SIGHUP") else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(30 - (time.monotonic() - stopped))
    assert not list(out.rglob("results.json"))

    resumed = subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes",
         "1", "--parallel", "2x1", "--out_dir", str(out), "--", *TINY],
        cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert summary(out)["counts"] == counts(done=1)
    assert len(list(out.rglob("results.json"))) == 1
    log, = (out / "sweep_logs").rglob("*.log")
    text = log.read_text(errors="replace")
    assert text.count("=== attempt 1 at ") == 2 and "\0" not in text


def test_a_second_sweep_on_the_same_tree_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    first = _start_sweep(tmp_path, out, "--parallel", "1x1", MLENERGY_HANG_RANK="0")
    try:
        _wait_for_hang(first, out, ranks=1)
        second = subprocess.run(
            [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes",
             "2", "--parallel", "1x1", "--out_dir", str(out), "--", *TINY],
            cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and "is being swept by another sweep (PID " \
            f"{first.pid}" in second.stderr, second.stderr
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert not list(out.rglob("*.log")) or all(
        "\0" not in p.read_text(errors="replace") for p in out.rglob("*.log"))


def test_pack_refuses_gpu_lists_that_would_share_or_never_come(tmp_path, capsys, monkeypatch):
    grid = ["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1", "2x1", "--device",
            "cuda", "--pack", "--out_dir", str(tmp_path / "run"), "--", "--workload.weights",
            "random"]
    for visible, gpus, message in (("0,0,1", "3", "lists device 0 more than once"),
                                   ("0,1", "4", "--gpus 4 but CUDA_VISIBLE_DEVICES=0,1 gives 2")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert sweep_main(["--gpus", gpus, *grid]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_pack_skips_a_point_bigger_than_its_slots_and_finishes(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes", "1",
         "--parallel", "1x1", "2x1", "--gpus", "1", "--pack", "--out_dir", str(out), "--", *TINY],
        cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    doc = summary(out)
    assert doc["counts"] == counts(done=1, skipped=1)
    skipped, = [p for p in doc["points"] if p["status"] == "skipped"]
    assert skipped["reason"] == "needs 2 GPUs (processes); 1 available"


def test_two_points_with_one_run_directory_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    # Counting FLOPs or not changes the run's identity but not its directory's name.
    code = sweep_main(["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1",
                       "--options=", "--options=--no_count_flops", "--out_dir", str(out), "--",
                       "--workload.weights", "tiny"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two points of the grid share the run directory" in err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--models", FLUX, "--models", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"],
     "--models is given more than once"),
    (["--models", FLUX, "--batch_sizes", "1", "--batch_sizes", "2"],
     "--batch_sizes is given more than once"),
    (["--models", FLUX, "--options", "--use_torch_compile"],
     "--options --use_torch_compile: a value that starts with -- must follow an equals sign"),
    (["--models", FLUX, "--batch_sizes", "1", "--options=--workload.model_name 'a b"],
     "cannot be split into flags (No closing quotation); close its quotes"),
])
def test_sweep_flags_are_given_once(argv, message, tmp_path, capsys):
    assert sweep_main([*argv, "--parallel", "1x1", "--out_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_an_unregistered_id_with_its_family_is_swept_as_run_takes_it(tmp_path, capsys):
    assert sweep_main(["--models", "black-forest-labs/FLUX.1-schnell", "--batch_sizes", "1",
                       "--parallel", "1x1", "--dry_run", "--out_dir", str(tmp_path / "run"),
                       "--", "--workload.family", "flux", "--workload.weights", "tiny"]) == 0
    assert "--workload.model_id black-forest-labs/FLUX.1-schnell" in capsys.readouterr().out
    assert sweep_main(["--models", "black-forest-labs/FLUX.1-schnell", "--parallel", "1x1",
                       "--batch_sizes", "1", "--dry_run", "--", "--workload.weights",
                       "tiny"]) == 2
    assert "--workload.family flux" in capsys.readouterr().err


def test_a_point_the_sweep_cannot_record_fails_without_starting(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "shared_node_runs").write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX, "--batch_sizes", "1",
         "--parallel", "1x1", "--out_dir", str(out), "--", *TINY],
        cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    doc = summary(out)
    assert doc["counts"] == counts(failed=1)
    assert doc["points"][0]["reason"].startswith("could not record the point in ")
    assert not list(out.rglob("results.json"))
    assert _processes_mentioning(str(out), but=os.getpid()) == []


def test_option_sets_are_the_one_flag_given_once_per_value(tmp_path, capsys):
    assert sweep_main(["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1", "--options=",
                       "--options=--use_torch_compile --compile_backend eager", "--dry_run",
                       "--out_dir", str(tmp_path / "run"), "--", "--workload.weights",
                       "tiny"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines()
                if not line.startswith("#")]
    assert len(commands) == 2 and "--use_torch_compile" in commands[1]


def test_the_preset_help_describes_every_preset(capsys):
    from mlenergy.diffusion.sweep import presets

    with pytest.raises(SystemExit) as done:
        sweep_main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: mlenergy-diffusion sweep")
    for name in presets.PRESETS:
        assert f"{name}: " in text, name
