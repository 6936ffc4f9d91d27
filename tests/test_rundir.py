"""The run directory: only complete results of this configuration count as done, reruns never
mix old and new files, and one run at a time measures into a directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_FLUX, load_results, offline_env, only_run_dir, run_benchmark
from mlenergy.diffusion.inputs.config import parse_cli
from mlenergy.diffusion.output import rundir, runlock
from mlenergy.diffusion.planning.plan import ConfigError, make_plan


def plan_of(base: Path, *extra: str):
    return make_plan(parse_cli([*TINY_FLUX, "--workload.base_dir", str(base), *extra]))


def complete_results(plan) -> dict:
    """A results.json as a finished run of `plan` writes it, reduced to what counts."""
    return {"model_id": plan.spec.model_id, "batch_size": plan.batch_size,
            "num_iterations": plan.benchmark_iters,
            "iterations": [{"index": i} for i in range(plan.benchmark_iters)],
            "total_time": 1.5, rundir.IDENTITY_KEY: rundir.identity(plan)}


def write_finished_run(plan) -> Path:
    plan.run_dir.mkdir(parents=True)
    results = plan.run_dir / "results.json"
    results.write_text(json.dumps(complete_results(plan)))
    (plan.run_dir / "requests.json").write_text("[]")
    return results


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


DAMAGED = {
    "empty": lambda p: p.write_text(""),
    "truncated": lambda p: p.write_text('{"model_id": "black-forest-labs/FLUX.1-dev", "batch_'),
    "a directory": lambda p: p.mkdir(),
    "a JSON list": lambda p: p.write_text("[1, 2]"),
    "without iterations": lambda p: p.write_text('{"model_id": "x", "num_iterations": 2, '
                                                 '"iterations": [], "total_time": 1.0}'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_only_a_complete_results_file_counts_as_done(tmp_path, damage):
    plan = plan_of(tmp_path / "out")
    plan.run_dir.mkdir(parents=True)
    DAMAGED[damage](plan.run_dir / "results.json")
    existing = rundir.inspect(plan.run_dir, rundir.identity(plan))
    assert existing.state == "incomplete" and "results.json" in existing.detail
    assert not rundir.is_complete(plan.run_dir, rundir.identity(plan))
    assert not rundir.is_complete(plan.run_dir)


def test_damaged_results_are_moved_aside_and_the_run_measured(tmp_path):
    base = tmp_path / "out"
    plan = plan_of(base, "--benchmark_iters", "1", "--no_count_flops")
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / "results.json").mkdir()
    (plan.run_dir / "requests.json").write_text('"from an interrupted run"')
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--benchmark_iters", "1",
                          "--no_count_flops"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "moving it aside and measuring again" in proc.stdout
    assert load_results(plan.run_dir)["num_iterations"] == 1
    assert rundir.is_complete(plan.run_dir, rundir.identity(plan))
    [parked] = (base / ".superseded").iterdir()
    assert parked.name.startswith(plan.run_dir.name + "@")
    assert (parked / "requests.json").read_text() == '"from an interrupted run"'
    assert (parked / "results.superseded.json").is_dir() and not (parked / "results.json").exists()


def test_every_setting_that_changes_the_numbers_is_in_the_identity(tmp_path):
    base = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue ball\n")
    first = plan_of(base, "--benchmark_iters", "2", "--workload.prompts_file", str(prompts))
    write_finished_run(first)
    assert rundir.inspect(first.run_dir, rundir.identity(first)).state == "done"
    variations = {
        "benchmark_iters": ["--benchmark_iters", "8"],
        "warmup_iters": ["--benchmark_iters", "2", "--warmup_iters", "3"],
        "count_flops": ["--benchmark_iters", "2", "--no_count_flops"],
        "prompts": ["--benchmark_iters", "2"],  # the dataset instead of the file
        "idle_baseline_s": ["--benchmark_iters", "2", "--idle_baseline_s", "1"],
    }
    for key, flags in variations.items():
        extra = flags if key == "prompts" else [*flags, "--workload.prompts_file", str(prompts)]
        other = plan_of(base, *extra)
        assert other.run_dir == first.run_dir  # the ML.ENERGY name does not say it...
        existing = rundir.inspect(other.run_dir, rundir.identity(other))
        assert existing.state == "other" and existing.detail.split(" with ")[1].startswith(key)
    # ...nor does it see a prompts file edited in place.
    prompts.write_text("a red cube\na green cone\n")
    edited = plan_of(base, "--benchmark_iters", "2", "--workload.prompts_file", str(prompts))
    assert rundir.inspect(edited.run_dir, rundir.identity(edited)).state == "other"


def test_close_floats_never_share_a_run_directory(tmp_path):
    one = plan_of(tmp_path, "--workload.guidance_scale", "1.0000001")
    two = plan_of(tmp_path, "--workload.guidance_scale", "1.0000002")
    assert one.run_dir != two.run_dir
    assert one.run_dir.name.endswith("+guidance-1.0000001+weights-tiny+dtype-float32")
    assert plan_of(tmp_path, "--workload.guidance_scale", "4").run_dir.name.count("guidance-4+")


def test_local_models_of_the_same_folder_name_are_different_runs(tmp_path):
    index = json.dumps({"_class_name": "FluxPipeline"})
    for owner in ("alice", "bob"):
        (tmp_path / owner / "flux").mkdir(parents=True)
        (tmp_path / owner / "flux" / "model_index.json").write_text(index)
    # Tiny weights: the folders hold no components to load (pretrained would be refused).
    plans = [make_plan(parse_cli(["workload:t2i", "--workload.model_id", str(tmp_path / o / "flux"),
                                  "--workload.family", "flux", "--workload.weights", "tiny",
                                  "--workload.height", "128",
                                  "--workload.width", "128", "--workload.base_dir",
                                  str(tmp_path / "out")]))
             for o in ("alice", "bob")]
    assert plans[0].run_dir == plans[1].run_dir
    write_finished_run(plans[0])
    existing = rundir.inspect(plans[1].run_dir, rundir.identity(plans[1]))
    assert existing.state == "other"
    assert existing.detail.endswith(f'{tmp_path / "alice" / "flux"}", not "{tmp_path / "bob" / "flux"}"')


def test_a_rerun_of_another_configuration_is_refused_not_skipped(tmp_path):
    base = tmp_path / "out"
    first = plan_of(base, "--benchmark_iters", "2")
    results = write_finished_run(first)
    before = sorted(p.name for p in first.run_dir.iterdir())
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--benchmark_iters", "8",
                          "--warmup_iters", "3", "--workload.prompts_file", str(prompts)],
                         tmp_path)
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert line.startswith(f"error: {results} was measured with ") and "--overwrite_results" in line
    assert sorted(p.name for p in first.run_dir.iterdir()) == before
    assert not (base / ".superseded").exists() and not list(base.glob(".*.lock"))
    # The same configuration again is done: skipped, untouched.
    again = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--benchmark_iters", "2"],
                          tmp_path)
    assert again.returncode == 0 and "already exists and holds this configuration" in again.stdout
    assert json.loads(results.read_text()) == complete_results(first)


def test_overwrite_then_failure_leaves_no_old_results_beside_new_files(tmp_path):
    base = tmp_path / "out"
    plan = plan_of(base, "--benchmark_iters", "1")
    results = write_finished_run(plan)
    old = results.read_text()
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--benchmark_iters", "1",
                          "--overwrite_results"], tmp_path, MLENERGY_FAIL_RANK="0")
    assert proc.returncode != 0
    assert "failure injected on rank 0" in proc.stderr
    assert not results.exists()  # the failed rerun's files stand alone
    assert (plan.run_dir / "driver_log.txt").exists()
    [parked] = (base / ".superseded").iterdir()
    assert (parked / "results.superseded.json").read_text() == old


def test_a_second_run_in_the_same_directory_is_refused(tmp_path):
    base = tmp_path / "out"
    args = [*TINY_FLUX, "--workload.base_dir", str(base), "--benchmark_iters", "500",
            "--no_count_flops"]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "mlenergy.diffusion.benchmark", *args],
                                 cwd=REPO, env=offline_env(tmp_path), stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "iteration 0:" not in log.read_text() and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        second = run_benchmark(args, tmp_path)
        assert second.returncode == 2
        [line] = error_lines(second.stderr)
        assert "is being measured by another run (PID " f"{first.pid}" in line
        assert first.poll() is None  # the first run goes on, its log its own
        lock = rundir.RunDirLock(only_run_dir(base))
        assert lock.path.exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # Its holder is dead: the lock is stale and the next run takes it.
    assert lock.path.exists()
    lock.acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_a_lock_whose_pid_names_another_process_is_stale(tmp_path):
    run_dir = tmp_path / "run"
    holder = rundir.RunDirLock(run_dir)
    record = holder._record()
    # A live process (this one's parent), but not the one that took the lock.
    record.update(pid=os.getppid(), process_start="1")
    holder.path.parent.mkdir(parents=True, exist_ok=True)
    holder.path.write_text(json.dumps(record))
    holder.acquire()
    holder.release()
    # The same live process with its own start time holds the lock for real.
    record["process_start"] = runlock._process_start(os.getppid())
    holder.path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"PID {os.getppid()} on"):
        rundir.RunDirLock(run_dir).acquire()


def test_a_reference_run_equal_to_the_run_directory_is_refused(tmp_path):
    plan = plan_of(tmp_path / "out", "--benchmark_iters", "1")
    plan.run_dir.mkdir(parents=True)
    doc = {"model_id": plan.spec.model_id, "seed": plan.seed, "height": 128, "width": 128,
           "batch_size": 2, "inference_steps": 2,
           "iterations": [{"prompts": ["a", "b"], "images": ["image_outputs/a.png",
                                                             "image_outputs/b.png"]}]}
    (plan.run_dir / "results.json").write_text(json.dumps(doc))
    (plan.run_dir / "requests.json").write_text("[]")
    with pytest.raises(ConfigError, match="is this run's own directory"):
        plan_of(tmp_path / "out", "--benchmark_iters", "1", "--overwrite_results",
                "--reference_run", str(plan.run_dir))


def test_the_quality_tool_refuses_a_run_with_more_images_than_its_reference(tmp_path, capsys):
    from PIL import Image

    from mlenergy.diffusion.results import quality

    def finished(run_dir: Path, images: list[str]) -> None:
        (run_dir / "image_outputs").mkdir(parents=True)
        for name in images:
            Image.new("RGB", (16, 16), (len(name) * 9 % 255, 0, 0)).save(run_dir / name)
        doc = {"model_id": "black-forest-labs/FLUX.1-dev", "seed": 1, "height": 16, "width": 16,
               "batch_size": 2, "inference_steps": 2, "num_iterations": 1,
               "iterations": [{"prompts": ["a", "b"], "images": images}]}
        (run_dir / "results.json").write_text(json.dumps(doc))
        (run_dir / "requests.json").write_text("[]")

    reference, run = tmp_path / "reference", tmp_path / "run"
    finished(reference, ["image_outputs/i0-0_a.png", "image_outputs/i0-1_b.png"])
    finished(run, ["image_outputs/i0-0_a.png", "image_outputs/i0-1_b.png",
                   "image_outputs/i0-2_extra.png"])
    assert quality.main([str(run), str(reference)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {run} saved 3 image(s) in iteration 0 but the reference run")
    assert "image_outputs/i0-2_extra.png has no counterpart" in line
