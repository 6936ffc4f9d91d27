"""Real runs of the benchmark on tiny models: one process, two processes over gloo, failures."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

import subprocess
import sys

from conftest import REPO, load_results, only_run_dir, run_benchmark
from mlenergy.diffusion.models.registry import MODELS

FAMILY_MODELS = [
    "black-forest-labs/FLUX.1-dev",
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "PixArt-alpha/PixArt-XL-2-1024-MS",
    "stabilityai/stable-diffusion-3-medium-diffusers",
    "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
]


def tiny_args(model_id: str, base, *extra: str) -> list[str]:
    return ["workload:text-to-image", "--workload.model_id", model_id,
            "--workload.weights", "tiny", "--workload.base_dir", str(base),
            "--workload.batch_size", "2", "--workload.height", "128", "--workload.width", "128",
            "--workload.inference_steps", "2", "--benchmark_iters", "2", *extra]


@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_every_family_runs_end_to_end_and_writes_every_file(tmp_path, model_id):
    base = tmp_path / "out"
    proc = run_benchmark(tiny_args(model_id, base), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(base)
    assert run_dir.name == ("batch-2+size-128x128+steps-2+seed-48105+uly-1+ring-1+tc-False"
                            "+weights-tiny+dtype-float32")
    doc = load_results(run_dir)
    # The ML.ENERGY 3.0.0 keys, in order, first.
    assert list(doc)[:18] == [
        "date", "model_id", "batch_size", "num_iterations", "height", "width",
        "inference_steps", "seed", "total_images", "total_time", "throughput_images_per_sec",
        "avg_time_per_image", "total_energy", "energy_per_image", "energy_measurement",
        "configurations", "timeline", "task"]
    assert doc["model_id"] == model_id and doc["num_iterations"] == 2
    assert doc["total_images"] == 4 and doc["total_time"] > 0
    # No GPU: energy is unmeasured (null), never 0, and the toolkit's key is absent.
    assert doc["energy_measured"] is False and doc["energy_per_image"] is None
    assert doc["total_energy"] is None and "iteration_energy_measurements" not in doc
    assert all(it["energy"] is None for it in doc["iterations"])
    assert doc["num_gpus"] == 0 and doc["gpu_model"]
    assert doc["prompt_source"] == "fallback" and doc["weights"] == "tiny"
    assert doc["environment"]["packages"]["xfuser"] == "0.7.0"
    # What produced the numbers: the benchmark's version and the exact command line.
    from mlenergy.diffusion import __version__

    assert doc["provenance"]["benchmark_version"] == __version__
    assert "--workload.weights tiny" in doc["provenance"]["command_line"]
    stats = doc["latency_per_iteration"]
    assert stats["min"] <= stats["median"] <= stats["max"] and stats["mean"] > 0
    assert doc["total_time"] == pytest.approx(sum(it["time"] for it in doc["iterations"]))
    # Every family's parts are found by the stage hooks, and every step is timed.
    assert set(doc["stage_breakdown"]) == {"text_encoding", "denoising", "decoding", "remainder"}
    for it in doc["iterations"]:
        assert it["stages"]["text_encoding"]["calls"] >= 1
        assert it["stages"]["decoding"]["calls"] >= 1
        assert it["stages"]["denoising"]["calls"] % 2 == 0  # 2 steps, 1 or more forwards each
        assert len(it["steps"]["latency_s"]) == 2 and it["stages"]["remainder"]["time_s"] >= 0
    assert doc["physical_floor"]["flops_per_forward"] > doc["physical_floor"][
        "attention_flops_per_forward"] > 0

    requests = json.loads((run_dir / "requests.json").read_text())
    assert [r["warmup"] for r in requests] == [True, False, False]
    assert all(r["batch_size"] == 2 and len(r["prompts"]) == 2 for r in requests)
    measured_prompts = [r["prompts"] for r in requests if not r["warmup"]]
    assert measured_prompts == [it["prompts"] for it in doc["iterations"]]

    images = sorted((run_dir / "image_outputs").iterdir())
    assert len(images) == 4 and [p.name[:5] for p in images] == ["i0-0_", "i0-1_", "i1-0_", "i1-1_"]
    for path in images:
        assert Image.open(path).size == (128, 128)
    assert "Summary" in (run_dir / "driver_log.txt").read_text()
    # model_info.json describes the pretrained architecture, not the tiny stand-in.
    info = json.loads((base / "model_info.json").read_text())
    assert info["model_id"] == model_id and info["total_parameters_billion"] > 0.5
    assert info["weight_precision"] == MODELS[model_id].dtype


def _pixels(run_dir):
    return {p.name: np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted((run_dir / "image_outputs").iterdir())}


def test_two_processes_with_ulysses_2_give_the_images_of_one(tmp_path, tiny_flux_args):
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_benchmark(tiny_flux_args(one, "--benchmark_iters", "2"), tmp_path)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = run_benchmark(["--ulysses_degree", "2", *tiny_flux_args(two, "--benchmark_iters", "2")],
                       tmp_path, nproc=2)
    assert p2.returncode == 0, p2.stderr[-3000:]
    run_one, run_two = only_run_dir(one), only_run_dir(two)
    assert run_two.name.replace("uly-2", "uly-1") == run_one.name
    doc = load_results(run_two)
    assert (doc["ulysses_degree"], doc["num_processes"]) == (2, 2)
    images_one, images_two = _pixels(run_one), _pixels(run_two)
    assert list(images_one) == list(images_two) and len(images_one) == 4
    for name, a in images_one.items():
        diff = np.abs(a - images_two[name])
        # Same latents, same weights, same prompts: only float32 rounding may differ, flipping a
        # pixel by one level where a value sits on a rounding boundary.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001, (name, diff.max(), (diff > 0).mean())
        assert a.std() > 0  # not a blank image


BAD_RUNS = [
    (["--ulysses_degree", "2"], 1, "= 2 but 1 process"),
    (["--ulysses_degree", "0"], 1, "--ulysses_degree must be at least 1"),
    (["--ring_degree", "2", "--ulysses_degree", "1"], 2, "needs CUDA"),
    (["--workload.batch_size", "0"], 1, "batch_size must be at least 1"),
    (["--workload.height", "100"], 1, "multiple of 16"),
    (["--workload.inference_steps", "0"], 1, "inference_steps must be at least 1"),
    (["--workload.model_id", "acme/unknown"], 1, "unknown model id"),
    (["--use_fbcache", "--workload.model_id", "stabilityai/stable-diffusion-3-medium-diffusers"],
     1, "only for the FLUX family"),
    (["--workload.prompts_file", "/nonexistent/prompts.txt"], 1, "does not exist"),
    (["--use_fp8_t5_encoder", "--workload.model_id", "stabilityai/stable-diffusion-xl-base-1.0"],
     1, "has no T5 text encoder"),
    (["--enable_sequential_cpu_offload"], 1, "needs one"),
    (["--use_teacache", "--use_fbcache"], 1, "exclusive"),
    (["--cache_threshold", "0.2"], 1, "add --use_teacache or --use_fbcache"),
    (["--use_torch_compile", "--warmup_iters", "1"], 1, "needs --warmup_iters 2"),
    (["--compile_mode", "max-autotune"], 1, "needs --use_torch_compile"),
    (["--use_torch_compile", "--compile_mode", "reduce-overhead"], 1, "needs a GPU"),
    (["--attention_backend", "cudnn"], 1, "needs a GPU"),
    (["--attention_backend", "bogus"], 1, "unknown --attention_backend"),
    (["--reference_run", "/nonexistent/run"], 1, "no such directory"),
    (["--idle_baseline_s", "-1"], 1, "--idle_baseline_s must be between 0 and 600"),
]


@pytest.mark.parametrize("extra,world,message", BAD_RUNS)
def test_bad_input_exits_with_one_line_and_no_results(tmp_path, tiny_flux_args, extra, world,
                                                      message):
    base = tmp_path / "out"
    # Rank 0 of a torchrun launch of `world` processes (refused before it would meet the others).
    env = {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
           "LOCAL_WORLD_SIZE": str(world), "TORCHELASTIC_RUN_ID": "bad-input"} if world > 1 else {}
    proc = run_benchmark(tiny_flux_args(base, *extra), tmp_path, **env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not base.exists()


def test_text_to_video_model_mismatch_and_malformed_prompts_file(tmp_path, tiny_flux_args):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    proc = run_benchmark(tiny_flux_args(tmp_path / "out", "--workload.prompts_file", str(bad)),
                         tmp_path)
    assert proc.returncode == 2 and "line 1 is not valid JSON" in proc.stderr
    proc = run_benchmark(["workload:t2v", "--workload.model_id", "black-forest-labs/FLUX.1-dev",
                          "--workload.base_dir", str(tmp_path / "v")], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip()] and "text-to-image model" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "v").exists()


def test_world_size_mismatch_under_torchrun(tmp_path, tiny_flux_args):
    base = tmp_path / "out"
    proc = run_benchmark(tiny_flux_args(base), tmp_path, nproc=2)
    assert proc.returncode != 0
    assert "--ulysses_degree 1 x --ring_degree 1 = 1 but 2 process(es)" in proc.stderr
    assert not base.exists()


def test_a_rank_failing_mid_run_ends_the_whole_run(tmp_path, tiny_flux_args):
    base = tmp_path / "out"
    start = time.monotonic()
    proc = run_benchmark(["--ulysses_degree", "2", *tiny_flux_args(base)], tmp_path, nproc=2,
                         timeout=240, MLENERGY_FAIL_RANK="1")
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "rank 1 failed: RuntimeError: failure injected on rank 1" in proc.stderr
    assert elapsed < 120
    assert not list(base.rglob("results.json"))


def test_existing_results_are_kept_unless_overwrite_is_asked(tmp_path, tiny_flux_args):
    base = tmp_path / "out"
    args = tiny_flux_args(base, "--benchmark_iters", "1", "--warmup_iters", "0")
    assert run_benchmark(args, tmp_path).returncode == 0
    results = only_run_dir(base) / "results.json"
    before = results.read_bytes()
    # The GPU smoke test's checker refuses a run whose energy was not measured.
    check = subprocess.run([sys.executable, "scripts/check_run.py", str(results.parent)],
                           cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 1 and "energy was not measured" in check.stderr
    skipped = run_benchmark(args, tmp_path)
    assert skipped.returncode == 0 and "already exists" in skipped.stdout
    assert results.read_bytes() == before
    again = run_benchmark([*args, "--overwrite_results"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results.read_bytes() != before


def test_no_save_images_and_prompts_file(tmp_path, tiny_flux_args):
    prompts = tmp_path / "mine.txt"
    prompts.write_text("a very small red square\na very small blue circle\n")
    base = tmp_path / "out"
    proc = run_benchmark(tiny_flux_args(base, "--no_save_images", "--benchmark_iters", "1",
                                        "--workload.prompts_file", str(prompts)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = only_run_dir(base)
    doc = load_results(run_dir)
    assert doc["prompt_source"] == f"file:{prompts}"
    assert sorted(doc["iterations"][0]["prompts"]) == ["a very small blue circle",
                                                       "a very small red square"]
    assert not (run_dir / "image_outputs").exists() and doc["iterations"][0]["images"] == []
