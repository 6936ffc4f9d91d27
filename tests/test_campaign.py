"""A campaign completes and every point is the run it claims to be: the leaderboard-v3 preset's
points run end to end (each lands where the sweep looks for it, and a rerun has nothing to do),
a run's identity holds every setting that changes its numbers, a rerun with other settings is
never called done, a lock never outlives its run, and the campaign's record keeps its history.
The same campaign under a real Slurm is in test_slurm.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_FLUX, offline_env, run_benchmark
from mlenergy.diffusion.inputs.config import BenchmarkConfig, TextToVideo, parse_cli
from mlenergy.diffusion.output import rundir
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch
from mlenergy.diffusion.sweep import presets

FLUX = "black-forest-labs/FLUX.1-dev"
# One tiny point of every model: the preset's own per-model flags (steps, guidance, dtype,
# scheduler shift) stay in force; only the size and the iteration counts are the tests'.
V3_TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
           "--warmup_iters", "1", "--benchmark_iters", "1", "--no_save_images",
           "--no_count_flops", "--idle_baseline_s", "0"]
# No v3 video model overrides its steps: 2 keep the video points short.
V3_TINY_EXTRA = {"text-to-image": [], "text-to-video": ["--workload.inference_steps", "2"]}


def sweep(tmp_path: Path, *args: str, timeout: float = 900, cwd: Path = REPO,
          **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.sweep", *args], cwd=cwd,
                          env=offline_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=timeout)


def summary(out: Path) -> dict:
    return json.loads((out / "sweep_summary.json").read_text())


def _launch_lines(stdout: str) -> list[str]:
    return re.findall(r"^\[\d+/\d+\] .*$", stdout, re.M)


# What each model of the v3 preset must have been measured with (its identity), beyond the
# registry's defaults: the kinds of per-model override the preset uses.
V3_OVERRIDES = {
    FLUX: {"inference_steps": 50},
    "stabilityai/stable-diffusion-3.5-medium": {"guidance_scale": 7.0},
    "stabilityai/stable-diffusion-3.5-large": {"guidance_scale": 7.0},
    "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers": {"dtype": "bfloat16"},
    "zai-org/CogVideoX-2b": {"dtype": "bfloat16"},
    "maxin-cn/Latte-1": {"dtype": "bfloat16"},
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {"scheduler_overrides": {"flow_shift": 12.0}},
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": {"scheduler_overrides": {"flow_shift": 12.0}},
}


@pytest.mark.parametrize("task", presets.TASKS)
def test_the_v3_preset_tiny_campaign_completes_then_has_nothing_to_do(task, tmp_path):
    out = tmp_path / "run"
    args = ["--preset", "leaderboard-v3", "--task", task, "--batch_sizes", "1", "--parallel",
            "1x1", "--out_dir", str(out), "--", *V3_TINY, *V3_TINY_EXTRA[task]]
    models = [m.model_id for m in presets.PRESETS["leaderboard-v3"].models_of(task)]
    first = sweep(tmp_path, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    doc = summary(out)
    assert doc["counts"]["done"] == len(models) == len(doc["points"]), doc["counts"]
    # Signs of life: elapsed and remaining time, and each point's headline as it finishes.
    unit = "video" if task == "text-to-video" else "image"
    assert re.search(r"^\[3/\d+\] .*\(elapsed \d+m\d\ds, about \d+m\d\ds left\)$",
                     first.stdout, re.M)
    assert first.stdout.count(f" s/{unit}, energy not measured)") == len(models)
    assert all(p["per_output"]["unit"] == unit and p["per_output"]["seconds"] > 0
               and p["per_output"]["joules"] is None for p in doc["points"])
    for point in doc["points"]:
        results = json.loads((Path(point["run_dir"]) / "results.json").read_text())
        identity = results["run_identity"]
        assert identity["model_id"] == point["model_id"]
        assert identity["prompts"]["sampling"] == "leaderboard"
        for key, value in V3_OVERRIDES.get(point["model_id"], {}).items():
            assert identity[key] == value, (point["model_id"], key)

    second = sweep(tmp_path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _launch_lines(second.stdout) == []
    assert summary(out)["counts"]["already_done"] == len(models)


# ------------------------------------------------------------------------- identity, flipped

# Fields of the configuration that do not change what is measured, and why.
NOT_IDENTITY = {
    "workload": "the subcommand's fields are listed one by one",
    "verbose": "console output only",
    "overwrite_results": "what to do with old results, not what is measured",
    "require_exclusive_gpus": "fails a shared run instead of warning; the numbers are the same",
    "base_dir": "where the run directory goes (its path is the identity's key)",
    "prompt_cache_dir": "where the same prompts are cached",
    "model_name": "the name results carry; model_path and revision name what loads",
}


def _write_prompts(tmp_path: Path) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a red cube number {i}\n" for i in range(40)))
    return str(path)


def _flips(tmp_path: Path) -> dict[str, list[str]]:
    """One changed flag per field of the configuration that changes the numbers."""
    return {
        "ulysses_degree": [], "ring_degree": [],  # by the process count: test_sweep, test_slurm
        "use_torch_compile": ["--use_torch_compile", "--compile_backend", "eager"],
        "compile_mode": ["--use_torch_compile", "--compile_mode", "max-autotune-no-cudagraphs"],
        "compile_backend": ["--use_torch_compile", "--compile_backend", "aot_eager"],
        "compile_scope": ["--use_torch_compile", "--compile_backend", "eager",
                          "--compile_scope", "blocks"],
        "compile_autotune": ["--use_torch_compile", "--compile_autotune"],
        "compile_overlap": [],  # two processes: test_plan_guards
        "use_fp8_t5_encoder": ["--use_fp8_t5_encoder"],
        "quantize_denoiser": [], "enable_sequential_cpu_offload": [],  # GPU only
        "fuse_qkv": ["--fuse_qkv"],
        "use_teacache": ["--use_teacache"], "use_fbcache": ["--use_fbcache"],
        "cache_threshold": ["--use_fbcache", "--cache_threshold", "0.3"],
        "attention_backend": ["--attention_backend", "sdpa_math"],
        "reference_run": [],  # needs a finished run: test_rundir
        "warmup_iters": ["--warmup_iters", "2"], "warmup_steps": ["--warmup_steps", "1"],
        "benchmark_iters": ["--benchmark_iters", "3"], "save_images": ["--no_save_images"],
        "idle_baseline_s": ["--idle_baseline_s", "1"], "count_flops": ["--no_count_flops"],
        "profile_steps": [],  # GPU only: test_plan_guards plans it for GPUs
        "model_id": ["--workload.model_id", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"],
        "family": ["--workload.model_id", "black-forest-labs/FLUX.1-schnell",
                   "--workload.family", "flux"],
        "revision": [], "variant": [],  # pretrained weights only: test_hub
        "flow_shift": [],  # FLUX's scheduler shifts dynamically: the video test below
        "weights": [],  # pretrained is refused offline; test_registry covers random
        "batch_size": ["--workload.batch_size", "1"], "height": ["--workload.height", "64"],
        "width": ["--workload.width", "64"], "inference_steps": ["--workload.inference_steps", "3"],
        "guidance_scale": ["--workload.guidance_scale", "2.0"],
        "seed": ["--workload.seed", "7"], "dtype": ["--workload.dtype", "bfloat16"],
        "prompts_file": ["--workload.prompts_file", _write_prompts(tmp_path)],
        "prompt_dataset": ["--workload.prompt_dataset", "someone/other-prompts"],
        "prompt_sampling": ["--workload.prompt_sampling", "leaderboard"],
        "num_frames": [], "fps": [],  # video: the video test below
    }


def _with(base: list[str], flags: list[str]) -> list[str]:
    """`base` with `flags` in force: a flag of `base` that `flags` sets again is dropped."""
    names = {f for f in flags if f.startswith("--")}
    out, i = [], 0
    while i < len(base):
        takes_value = i + 1 < len(base) and not base[i + 1].startswith("--")
        step = 2 if base[i].startswith("--") and takes_value else 1
        if base[i] not in names:
            out += base[i:i + step]
        i += step
    return out + flags


def _identity(argv: list[str]) -> dict:
    return rundir.identity(make_plan(parse_cli(argv), Launch()))


def test_every_field_that_changes_the_numbers_changes_the_identity(tmp_path, monkeypatch):
    from test_plan_guards import _cache_other_dataset

    _cache_other_dataset(tmp_path, monkeypatch)
    fields = {f.name for cls in (BenchmarkConfig, TextToVideo) for f in dataclasses.fields(cls)}
    flips = _flips(tmp_path)
    # A new field must be placed: in the identity (with a flip here) or named as not changing
    # the numbers.
    assert fields == set(flips) | set(NOT_IDENTITY), fields ^ (set(flips) | set(NOT_IDENTITY))
    base = _identity(TINY_FLUX)
    for name, flags in flips.items():
        if flags:
            assert _identity(_with(TINY_FLUX, flags)) != base, name
    video = ["workload:text-to-video", "--workload.weights", "tiny"]
    video_base = _identity(video)
    for flags in (["--workload.flow_shift", "7"], ["--workload.num_frames", "9"],
                  ["--workload.fps", "8"]):
        assert _identity([*video, *flags]) != video_base, flags


POINT = ["--models", FLUX, "--batch_sizes", "1", "--parallel", "1x1"]
POINT_TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
              "--workload.inference_steps", "2", "--warmup_iters", "1", "--benchmark_iters", "2",
              "--no_save_images", "--no_count_flops", "--idle_baseline_s", "0"]


def _replace(flags: list[str], name: str, value: str) -> list[str]:
    i = flags.index(name)
    return [*flags[:i + 1], value, *flags[i + 2:]]


def test_a_rerun_with_other_settings_is_measured_or_refused_never_called_done(tmp_path):
    out = tmp_path / "run"
    first = sweep(tmp_path, *POINT, "--out_dir", str(out), "--", *POINT_TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = Path(summary(out)["points"][0]["run_dir"])
    same = sweep(tmp_path, *POINT, "--out_dir", str(out), "--dry_run", "--", *POINT_TINY)
    assert same.returncode == 0 and "# already done" in same.stdout
    flips = {
        "benchmark_iters": _replace(POINT_TINY, "--benchmark_iters", "3"),
        "warmup_iters": _replace(POINT_TINY, "--warmup_iters", "2"),
        "prompts_file": [*POINT_TINY, "--workload.prompts_file", _write_prompts(tmp_path)],
        "prompt_sampling": [*POINT_TINY, "--workload.prompt_sampling", "leaderboard"],
        "weights": _replace(POINT_TINY, "--workload.weights", "pretrained"),
        "options": [*POINT_TINY, "--attention_backend", "sdpa_math"],
    }
    for name, flags in flips.items():
        proc = sweep(tmp_path, *POINT, "--out_dir", str(out), "--dry_run", "--", *flags)
        assert "already done" not in proc.stdout, name
        if proc.returncode == 0:  # a new run directory: the point is measured
            assert "mlenergy.diffusion.benchmark" in proc.stdout, name
        else:  # the same directory, another configuration: one line says so
            assert proc.returncode == 2, (name, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
    # The Slurm task's test of done is the same: it runs nothing for the same flags, and does
    # not take the changed flags' point for done (the benchmark then refuses the directory).
    argv = json.loads((run_dir / "results.json").read_text())["run_identity"]
    assert argv["benchmark_iters"] == 2
    command = summary(out)["points"][0]["command"].split()
    bench = command[command.index("mlenergy.diffusion.benchmark") + 1:]
    for flags, done in ((bench, True), (_replace(bench, "--benchmark_iters", "3"), False)):
        task = subprocess.run(
            [sys.executable, "-m", "mlenergy.diffusion.sweep.slurm_task", "--out_dir", str(out),
             "--run_dir", str(run_dir), "--device", "cpu", "--", *flags],
            cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert task.stdout.startswith("already done") == done, task.stdout + task.stderr
        assert task.returncode == (0 if done else 1), task.stdout[-2000:] + task.stderr
    assert json.loads((run_dir / "results.json").read_text())["run_identity"] == argv


# ------------------------------------------------------------------------------ locks

def _locks(base: Path) -> list[Path]:
    return sorted(base.rglob(".*.lock"))


def test_a_failing_run_leaves_no_lock(tmp_path):
    base = tmp_path / "base"
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base)], tmp_path,
                         MLENERGY_FAIL_RANK="0")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "failure injected" in proc.stderr and _locks(base) == []


def test_a_failing_rank_of_two_leaves_no_lock(tmp_path):
    base = tmp_path / "base"
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--ulysses_degree", "2"],
                         tmp_path, nproc=2, MLENERGY_FAIL_RANK="1")
    assert proc.returncode != 0
    assert _locks(base) == [], proc.stderr[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signalled_run_leaves_no_lock(signum, tmp_path):
    base = tmp_path / "base"
    cmd = [sys.executable, "-m", "mlenergy.diffusion.benchmark", *TINY_FLUX,
           "--workload.base_dir", str(base)]
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=offline_env(tmp_path, MLENERGY_HANG_RANK="0"),
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "hang injected" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert len(_locks(base)) == 1
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == -signum
    finally:
        proc.kill()
    assert _locks(base) == []


def _plant_lock(tmp_path: Path, age_s: float) -> Path:
    base = tmp_path / "base"
    run_dir = make_plan(parse_cli([*TINY_FLUX, "--workload.base_dir", str(base)]),
                        Launch()).run_dir
    lock = rundir.RunDirLock(run_dir).path
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 4242, "host": "node-that-died", "process_start": "1",
                                "since": "2026-12-01T00:00:00"}))
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    return base


def test_a_lock_from_another_host_without_heartbeat_is_taken_over_with_a_warning(tmp_path):
    base = _plant_lock(tmp_path, age_s=600)
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base)], tmp_path,
                         MLENERGY_LOCK_STALE_S="120")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"Taking over the lock .* of PID 4242 on node-that-died .*no heartbeat",
                     proc.stderr), proc.stderr[-3000:]
    assert _locks(base) == [] and list(base.rglob("results.json"))


def test_a_lock_from_another_host_with_a_recent_heartbeat_is_respected(tmp_path):
    base = _plant_lock(tmp_path, age_s=5)
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base)], tmp_path,
                         MLENERGY_LOCK_STALE_S="120")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert "being measured by another run (PID 4242 on node-that-died" in proc.stderr
    assert len(_locks(base)) == 1 and not list(base.rglob("results.json"))


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("MLENERGY_LOCK_STALE_S", "1")
    lock = rundir.RunDirLock(tmp_path / "runs" / "a-run")
    lock.acquire()
    try:
        stamp = time.time() - 100
        os.utime(lock.path, (stamp, stamp))
        time.sleep(0.5)  # a tenth of the stale time between beats
        assert time.time() - lock.path.stat().st_mtime < 1
    finally:
        lock.release()
    assert not lock.path.exists()


# ------------------------------------------------------------------- the campaign's record

def test_the_summary_keeps_every_sweep_and_what_measured_each_point(tmp_path):
    out = tmp_path / "run"
    grid = ["--models", FLUX, "--parallel", "1x1", "--out_dir", str(out)]
    first = sweep(tmp_path, *grid, "--batch_sizes", "1", "--", *POINT_TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    measured = summary(out)["points"][0]
    second = sweep(tmp_path, *grid, "--batch_sizes", "1", "2", "--", *POINT_TINY)
    assert second.returncode == 0, second.stderr[-2000:]
    doc = summary(out)
    assert doc["command"].startswith("mlenergy-diffusion sweep --models")
    assert "--batch_sizes 1 2" in doc["command"] and doc["version"].startswith("mlenergy-diffusion")
    assert doc["grid"]["batch_sizes"] == [1, 2] and doc["grid"]["common_args"] == POINT_TINY
    assert [h["command"] for h in doc["history"]] == [summary_command(first_args=grid)]
    one, two = doc["points"]
    assert one["status"] == "already_done" and two["status"] == "done"
    for key in ("seconds", "log", "started", "finished", "shared_node_with", "command"):
        assert one[key] == measured[key], key
    assert one["measured_by_sweep"] == doc["history"][0]["started"]
    # A later sweep of part of the grid keeps the other points on record.
    third = sweep(tmp_path, *grid, "--batch_sizes", "2", "--", *POINT_TINY)
    assert third.returncode == 0
    doc = summary(out)
    assert len(doc["history"]) == 2 and len(doc["points"]) == 2
    assert doc["points"][1]["seconds"] == measured["seconds"]


def summary_command(first_args: list[str]) -> str:
    import shlex

    return shlex.join(["mlenergy-diffusion", "sweep", *first_args, "--batch_sizes", "1", "--",
                       *POINT_TINY])


def test_an_emitted_campaign_is_kept_beside_the_runs(tmp_path):
    out = tmp_path / "run"
    proc = sweep(tmp_path, *POINT, "--device", "cuda", "--gpus", "1", "--out_dir", str(out),
                 "--emit", "slurm", "--", "--workload.weights", "random")
    assert proc.returncode == 0, proc.stderr
    kept, = (out / "sweep_logs" / "slurm").glob("campaign-*.sh")
    assert kept.read_text() == proc.stdout and str(kept) in proc.stderr
    assert "#SBATCH --job-name=img-1gpu" in proc.stdout
