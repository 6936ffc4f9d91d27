"""Points measured by one process (issue: a campaign keeps its GPUs measuring). A grouped sweep
writes the same run directories as one launch per point (same identities, keys in the same
order, the same images for the same seeds); a failing point in the middle of a group loses no
other point; a group interrupted midway resumes with only its unfinished points; `--then` that
joins points which cannot share a pipeline is one line before any model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlenergy.data.records.runs as runs_module
import pytest

from conftest import (REPO, offline_env, run_benchmark, toolkit_base_dir, toolkit_config_dir,
                      write_gpu_script)
from test_sweep import by_status, counts, summary, sweep
from test_sweep_operator import _wait_for_hang

FLUX = "black-forest-labs/FLUX.1-dev"
TINY = ["--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
        "--workload.inference_steps", "2", "--warmup_iters", "1", "--benchmark_iters", "2",
        "--no_count_flops", "--idle_baseline_s", "0"]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag`'s value replaced."""
    i = args.index(flag)
    return [*args[:i + 1], value, *args[i + 2:]]


def _grid(out: Path, *batches: str) -> list[str]:
    return ["--models", FLUX, "--batch_sizes", *batches, "--parallel", "1x1", "--out_dir",
            str(out), "--device", "cpu"]


def _key_paths(value, prefix: str = "") -> list[str]:
    """Every key of a JSON document in order, nested ones as a.b[].c."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [f"{prefix}{k}", *_key_paths(v, f"{prefix}{k}.")]]
    if isinstance(value, list):
        return [p for v in value[:1] for p in _key_paths(v, f"{prefix}[].")]
    return []


def _runs(out: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in (out / "diffusion").rglob("results.json")}


def test_a_grouped_sweep_writes_the_runs_of_one_launch_per_point(tmp_path):
    grouped, alone = tmp_path / "grouped", tmp_path / "alone"
    first = sweep(tmp_path, *_grid(grouped, "1", "2"), "--", *TINY)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = sweep(tmp_path, *_grid(alone, "1", "2"), "--one_point_per_process", "--", *TINY)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    # One launch for the two points, against two; the summary and the console say so.
    assert summary(grouped)["gpu_time"]["launches"] == 1
    assert summary(alone)["gpu_time"]["launches"] == 2
    share = summary(grouped)["gpu_time"]
    assert 0 < share["measured_gpu_s"] < share["booked_gpu_s"]
    assert "GPU time:" in first.stdout and "inside measured windows" in first.stdout
    assert "(2 points, one process)" in first.stdout

    runs_grouped, runs_alone = _runs(grouped), _runs(alone)
    assert sorted(runs_grouped) == sorted(runs_alone) and len(runs_grouped) == 2
    for name, run_dir in runs_grouped.items():
        mine = json.loads((run_dir / "results.json").read_text())
        theirs = json.loads((runs_alone[name] / "results.json").read_text())
        assert mine["run_identity"] == theirs["run_identity"]
        assert _key_paths(mine) == _key_paths(theirs)
        assert mine["startup"]["group_size"] == 2 and theirs["startup"]["group_size"] == 1
        # The same prompts, seeds and so images.
        images = sorted((run_dir / "image_outputs").iterdir())
        assert images and [p.name for p in images] == sorted(
            p.name for p in (runs_alone[name] / "image_outputs").iterdir())
        for image in images:
            assert image.read_bytes() == (runs_alone[name] / "image_outputs" /
                                          image.name).read_bytes(), image.name
    positions = sorted(json.loads((d / "results.json").read_text())["startup"]["group_position"]
                       for d in runs_grouped.values())
    assert positions == [1, 2]


def test_grouped_points_on_scripted_gpus_measure_energy_and_share_one_idle_baseline(tmp_path):
    """The real energy path (probes/fake.py GPUs): each point its own windows, one idle
    baseline for both, and the ML.ENERGY toolkit reads both runs."""
    root = tmp_path / "results"
    base = toolkit_base_dir(root)
    gpus = write_gpu_script(tmp_path / "gpus.json", power_w=[300.0])
    common = ["--workload.base_dir", str(base), *TINY[:-2], "--idle_baseline_s", "0.5",
              "--no_save_images"]
    proc = run_benchmark(["workload:t2i", *common, "--then", "workload:t2i", *common,
                          "--workload.batch_size", "2"], tmp_path, MLENERGY_FAKE_GPUS=str(gpus))
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = sorted((json.loads(p.read_text()) for p in base.rglob("results.json")),
                  key=lambda d: d["batch_size"])
    assert [d["batch_size"] for d in docs] == [1, 2]
    assert docs[0]["idle_baseline"] == docs[1]["idle_baseline"]
    assert docs[0]["idle_baseline"]["total_power_w"] == pytest.approx(300.0, rel=0.05)
    for doc in docs:
        assert doc["energy_measured"] is True
        assert doc["energy_per_image"] == pytest.approx(300.0 * doc["avg_time_per_image"],
                                                        rel=0.05)
        # Each point's power timeline reaches over its own windows.
        assert doc["energy_cross_check"]["timeline"]["within_tolerance"] is True
    df = runs_module.DiffusionRuns.from_raw_results(
        root, config_dir=toolkit_config_dir(root, base)).to_dataframe()
    assert sorted(df["batch_size"]) == [1, 2]
    for doc in docs:
        row = df[df["batch_size"] == doc["batch_size"]].iloc[0]
        assert row["energy_per_generation_joules"] == pytest.approx(doc["energy_per_image"])


def test_a_failing_point_in_the_middle_of_a_group_loses_no_other_point(tmp_path):
    out = tmp_path / "run"
    proc = sweep(tmp_path, *_grid(out, "1", "2", "4"), "--timeout_s", "240", "--", *TINY,
                 "--no_save_images", MLENERGY_FAIL_RANK="0@2")
    assert proc.returncode == 1, proc.stdout[-3000:]
    doc = summary(out)
    assert doc["counts"] == counts(done=2, failed=1)
    failed, = by_status(doc, "failed")
    assert failed["batch_size"] == 2 and failed["reason"].startswith("exit status")
    assert not (Path(failed["run_dir"]) / "results.json").exists()
    assert sorted(p["batch_size"] for p in by_status(doc, "done")) == [1, 4]
    # The failing launch measured batch 1; batch 4, which it never reached, got a launch of its
    # own (one attempt: the first launch never ran it).
    assert doc["gpu_time"]["launches"] == 2
    assert all(p["attempts"] == 1 for p in doc["points"])
    assert "failure injected on rank 0" in Path(failed["log"]).read_text()


def test_a_group_interrupted_midway_resumes_with_its_unfinished_points(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", *_grid(out, "1", "2", "4"), "--",
         *TINY, "--no_save_images"],
        cwd=REPO, env=offline_env(tmp_path, MLENERGY_HANG_RANK="0@2"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_hang(proc, out, ranks=1)  # batch 2's first measured iteration
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    doc = summary(out)
    assert doc["counts"] == counts(done=1, interrupted=1, not_run=1), output[-3000:]
    status = {p["batch_size"]: p for p in doc["points"]}
    assert status[1]["status"] == "done" and status[2]["status"] == "interrupted"
    assert status[4]["status"] == "not_run"
    for batch in (2, 4):
        run_dir = Path(status[batch]["run_dir"])
        assert not (run_dir / "results.json").exists()
        assert not list(run_dir.parent.glob(f"{run_dir.name}*.lock")) if run_dir.parent.exists() else True

    again = sweep(tmp_path, *_grid(out, "1", "2", "4"), "--", *TINY, "--no_save_images")
    assert again.returncode == 0, again.stdout[-3000:]
    doc = summary(out)
    assert doc["counts"] == counts(done=2, already_done=1)
    assert doc["gpu_time"]["launches"] == 1
    assert {p["batch_size"] for p in by_status(doc, "done")} == {2, 4}


def test_then_joining_points_that_cannot_share_a_pipeline_is_one_line(tmp_path):
    base = tmp_path / "runs"
    common = ["--workload.base_dir", str(base), *TINY]
    three_steps = _with(common, "--workload.inference_steps", "3")
    proc = run_benchmark(["workload:t2i", *common, "--then", "workload:t2i", *three_steps],
                         tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "point 2 has inference_steps=3 but point 1 has 2" in lines[0]
    assert not base.exists()
    same = run_benchmark(["workload:t2i", *common, "--then", "workload:t2i", *common], tmp_path)
    assert same.returncode == 2 and "name the same run directory" in same.stderr
    empty = run_benchmark(["workload:t2i", *common, "--then"], tmp_path)
    assert empty.returncode == 2 and "--then needs a whole benchmark command line" in empty.stderr
    assert not base.exists()


def test_the_startup_section_accounts_for_the_time_before_the_first_window(tmp_path):
    base = tmp_path / "runs"
    common = ["--workload.base_dir", str(base), *TINY, "--no_save_images"]
    proc = run_benchmark(["workload:t2i", *common, "--then", "workload:t2i", *common,
                          "--workload.batch_size", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = sorted((json.loads(p.read_text()) for p in base.rglob("results.json")),
                  key=lambda d: d["batch_size"])
    first, second = (d["startup"] for d in docs)
    assert (first["group_size"], first["group_position"]) == (2, 1)
    assert (second["group_size"], second["group_position"]) == (2, 2)
    for key in ("imports_s", "process_group_s", "inputs_s", "load_s", "idle_baseline_s"):
        assert first[key] is not None and first[key] == second[key] >= 0, key
    # The first point waited for the process's start-up; the second only for its own.
    assert first["to_first_window_s"] > first["imports_s"] + first["load_s"]
    assert 0 < second["to_first_window_s"] < first["to_first_window_s"]
    assert second["to_first_window_s"] >= second["warmup_s"]
    # Each point has its own warm-up, window and memory peak; the load is reported once.
    assert docs[0]["model_load_time_s"] == docs[1]["model_load_time_s"]
    assert docs[0]["timeline"]["benchmark_end_time"] <= docs[1]["timeline"]["benchmark_start_time"]


def test_a_compiled_group_compiles_each_batch_size_statically_before_measuring(tmp_path):
    """Each point recompiles for its own shape in its warm-up, as it would alone, and measures
    without compiling."""
    base = tmp_path / "runs"
    common = ["--workload.base_dir", str(base), *_with(TINY, "--warmup_iters", "2"),
              "--no_save_images", "--use_torch_compile", "--compile_backend", "eager",
              "--compile_scope", "blocks"]
    proc = run_benchmark(["workload:t2i", *common, "--then", "workload:t2i", *common,
                          "--workload.batch_size", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = sorted((json.loads(p.read_text()) for p in base.rglob("results.json")),
                  key=lambda d: d["batch_size"])
    for doc in docs:
        compiled = doc["compile"]
        assert compiled["graphs_compiled_per_warmup_iteration"][0] > 0, compiled
        assert compiled["graphs_compiled_per_warmup_iteration"][1:] == [0], compiled
        assert compiled["graphs_compiled_during_measurement"] == 0, compiled
