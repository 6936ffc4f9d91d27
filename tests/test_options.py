"""Performance options on tiny FLUX: compilation, step caches, FP8 T5, attention backend, and the
image comparison against a reference run. GPU-only options are checked for their errors."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_FLUX, load_results, only_run_dir, run_benchmark, with_flags
from mlenergy.diffusion.engine import options_apply
from mlenergy.diffusion.inputs.config import ConfigError, parse_cli
from mlenergy.diffusion.models.registry import FAMILIES
from mlenergy.diffusion.planning import options
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.probes.compile import CompileTracker
from mlenergy.diffusion.process.launch import Launch


def plan_for(argv: str, world_size: int = 1, device_type: str = "cuda"):
    launch = Launch(world_size=world_size, local_world_size=1, device_type=device_type,
                    visible_gpus=8)
    return make_plan(parse_cli(shlex.split(argv)), launch)


# ---------------------------------------------------------------- planning

def test_options_name_the_run_directory_and_resolve_their_defaults():
    plan = plan_for("workload:t2i --use_torch_compile --compile_mode max-autotune-no-cudagraphs "
                    "--use_fbcache --cache_threshold 0.2 --attention_backend cudnn "
                    "--use_fp8_t5_encoder")
    assert plan.run_dir.name == (
        "batch-1+size-1024x1024+steps-28+seed-48105+uly-1+ring-1+tc-True"
        "+compilemode-max-autotune-no-cudagraphs+fp8t5-True+cache-fbcache+cachethresh-0.2"
        "+attn-cudnn")
    assert plan.warmup_iters == 2 and plan.options.cache_threshold == 0.2
    default = plan_for("workload:t2i --use_teacache --cache_threshold 0.12")
    assert default.run_dir.name.endswith("+tc-False+cache-teacache")
    assert default.warmup_iters == 1 and default.options.cache_threshold == 0.12
    assert plan_for("workload:t2i").options.cache_threshold is None
    blocks = plan_for("workload:t2i --use_torch_compile --compile_scope blocks")
    assert blocks.run_dir.name.endswith("+tc-True+compilescope-blocks")
    # The default scope is not named.
    assert plan_for("workload:t2i --use_torch_compile --compile_scope transformer") \
        .run_dir.name.endswith("+tc-True")


PLAN_ERRORS = [
    ("--ulysses_degree 2 --enable_sequential_cpu_offload workload:t2i", 2, "cuda",
     "cannot combine with --ulysses_degree 2"),
    ("--use_fp8_t5_encoder workload:t2i --workload.model_id "
     "stabilityai/stable-diffusion-xl-base-1.0", 1, "cuda", "has no T5 text encoder"),
    ("--use_torch_compile workload:t2i --workload.model_id "
     "stabilityai/stable-diffusion-xl-base-1.0", 1, "cuda", "transformer denoisers only"),
    ("--use_fbcache --cache_threshold 0 workload:t2i", 1, "cuda", "must be above 0"),
    ("--use_torch_compile --compile_backend tvm workload:t2i", 1, "cuda",
     "unknown --compile_backend"),
    ("--use_torch_compile --compile_backend eager --compile_mode max-autotune workload:t2i", 1,
     "cuda", "inductor setting"),
    ("--use_torch_compile --compile_mode fastest workload:t2i", 1, "cuda",
     "unknown --compile_mode"),
    ("--compile_backend eager workload:t2i", 1, "cuda", "needs --use_torch_compile"),
    ("--compile_scope blocks workload:t2i", 1, "cuda", "--compile_scope needs --use_torch_compile"),
    ("--use_torch_compile --compile_scope layers workload:t2i", 1, "cuda",
     "unknown --compile_scope 'layers'"),
    ("--use_torch_compile --compile_scope blocks workload:t2v --workload.model_id "
     "THUDM/CogVideoX-2b", 1, "cuda",
     "CogVideoX3DModel|does not name its repeated blocks; use --compile_scope transformer"),
    ("--attention_backend sdpa_efficient workload:t2i --workload.weights tiny", 1, "cpu",
     "needs a GPU"),
    ("--fuse_qkv workload:t2i --workload.model_id PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1,
     "cuda", "has no fused QKV projection .*families with one: flux, wan"),
]


@pytest.mark.parametrize("argv,world,device,message", PLAN_ERRORS)
def test_option_combinations_that_cannot_work_are_refused(argv, world, device, message):
    with pytest.raises(ConfigError, match=message):
        plan_for(argv, world_size=world, device_type=device)


def test_an_attention_backend_whose_package_is_missing_is_refused(monkeypatch):
    real = options.importlib.util.find_spec
    monkeypatch.setattr(options.importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the flash_attn package"):
        plan_for("--attention_backend flash workload:t2i")


def test_inductor_on_cpu_needs_a_cpp_compiler(monkeypatch):
    monkeypatch.setattr(options.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="no C\\+\\+ compiler"):
        plan_for("--use_torch_compile workload:t2i --workload.weights tiny", device_type="cpu")
    plan_for("--use_torch_compile --compile_backend aot_eager workload:t2i "
             "--workload.weights tiny", device_type="cpu")


# ---------------------------------------------------------------- compile accounting

def test_compile_tracker_sees_a_recompilation_and_the_report_flags_it():
    tracker = CompileTracker()
    double = torch.compile(lambda x: x * 2, backend="eager")
    double(torch.ones(3))
    before = tracker.snapshot()
    double(torch.ones(3))
    steady = tracker.difference(before, tracker.snapshot())
    assert steady[0] == 0
    before = tracker.snapshot()
    double(torch.ones(3, 5))  # a new rank: dynamo must compile another graph
    changed = tracker.difference(before, tracker.snapshot())
    assert changed[0] >= 1 and changed[1] > 0

    plan = plan_for("--use_torch_compile --compile_backend eager workload:t2i "
                    "--workload.weights tiny", device_type="cpu")
    report = options_apply.compile_report(plan, [5.0, 1.1], [(3, 4.0), (0, 0.0)], changed, [1.0, 1.2])
    assert report.recompiled_during_measurement is True
    assert report.compile_time_s == 4.0
    assert report.first_warmup_minus_fastest_measured_s == pytest.approx(4.0)


def test_quantized_bytes_count_the_fp8_payload_not_the_reported_dtype():
    from optimum.quanto import freeze, qfloat8, quantize

    layer = torch.nn.Linear(64, 64, bias=False)
    assert options_apply.module_bytes(layer) == 64 * 64 * 4
    quantize(layer, weights=qfloat8)
    freeze(layer)
    # One byte per weight plus a float32 scale per output row (and nothing else).
    assert 64 * 64 <= options_apply.module_bytes(layer) <= 64 * 64 + 64 * 4 + 16


# ---------------------------------------------------------------- real runs

STEPS4 = ["--workload.inference_steps", "4", "--benchmark_iters", "2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An exact run: the reference the lossy runs are compared with."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_benchmark(with_flags([*TINY_FLUX, "--workload.base_dir", str(tmp / "out")],
                                    *STEPS4), tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(tmp / "out")


def _run(tmp_path, *extra, nproc=1):
    base = tmp_path / "out"
    args = with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], *STEPS4, *extra)
    if nproc > 1:
        args = ["--ulysses_degree", str(nproc), *args]
    proc = run_benchmark(args, tmp_path, nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(base), proc


def test_an_exact_rerun_matches_its_reference_image_for_image(tmp_path, reference):
    run_dir, _ = _run(tmp_path, "--reference_run", str(reference),
                      "--attention_backend", "sdpa")
    doc = load_results(run_dir)
    q = doc["quality"]
    assert q["num_images"] == 4 and q["identical_images"] == 4
    assert q["mean_psnr_db"] is None and q["mean_ssim"] == pytest.approx(1.0)
    assert all(m["identical"] and m["psnr_db"] is None for m in q["images"])
    assert q["lpips"].startswith("absent") and q["clip_score"].startswith("absent")
    assert doc["configurations"]["reference_run"] == str(reference)
    assert doc["attention"]["requested"] == "sdpa"
    assert doc["attention"]["used"] == "diffusers:native"
    assert "identical" in (run_dir / "driver_log.txt").read_text()


def test_fbcache_with_compile_costs_measurable_quality(tmp_path, reference):
    # A threshold far above any relative change: every step after the first reuses the cache.
    run_dir, proc = _run(tmp_path, "--use_fbcache", "--cache_threshold", "100",
                         "--use_torch_compile", "--compile_backend", "aot_eager",
                         "--reference_run", str(reference))
    assert run_dir.name.endswith("+tc-True+weights-tiny+dtype-float32+compilebackend-aot_eager"
                                 "+cache-fbcache+cachethresh-100")
    doc = load_results(run_dir)
    c = doc["configurations"]
    assert (c["use_fbcache"], c["cache_threshold"], c["use_torch_compile"],
            c["compile_backend"], c["warmup_iters"]) == (True, 100.0, True, "aot_eager", 2)
    compiled = doc["compile"]
    assert (compiled["scope"], compiled["compiled"]) == ("transformer",
                                                         "forward of the denoiser, by xDiT")
    assert compiled["graphs_compiled_per_warmup_iteration"][0] >= 1
    assert compiled["graphs_compiled_during_measurement"] == 0
    assert compiled["recompiled_during_measurement"] is False
    assert compiled["compile_time_s"] > 0 and len(doc["warmup_iteration_times"]) == 2
    q = doc["quality"]
    assert q["identical_images"] == 0 and q["num_images"] == 4
    assert 0 < q["mean_psnr_db"] < 80 and 0 < q["mean_ssim"] < 1
    assert q["mean_psnr_db"] == pytest.approx(sum(m["psnr_db"] for m in q["images"]) / 4)
    assert "RECOMPILED" not in proc.stderr
    assert "--compile_scope blocks compiles far faster" in proc.stderr
    # The same comparison made afterwards, as for runs made where scikit-image is missing.
    from mlenergy.diffusion.results import quality

    assert quality.main([str(run_dir), str(reference), "--write"]) == 0
    again = load_results(run_dir)["quality"]
    assert again["mean_psnr_db"] == pytest.approx(q["mean_psnr_db"])
    assert again["mean_ssim"] == pytest.approx(q["mean_ssim"])
    assert quality.main([str(run_dir), str(tmp_path / "nowhere")]) == 2


def test_compiling_blocks_under_ulysses_with_fbcache_compiles_each_block_class_once(tmp_path):
    # Regional compilation: one graph per repeated block class, whatever the step cache does
    # between blocks, and nothing compiles again after the first warm-up iteration.
    run_dir, proc = _run(tmp_path, "--use_fbcache", "--cache_threshold", "100",
                         "--use_torch_compile", "--compile_backend", "aot_eager",
                         "--compile_scope", "blocks", nproc=2)
    assert run_dir.name.endswith("+compilescope-blocks+cache-fbcache+cachethresh-100")
    doc = load_results(run_dir)
    assert doc["configurations"]["compile_scope"] == "blocks"
    compiled = doc["compile"]
    assert compiled["scope"] == "blocks"
    assert compiled["compiled"] == ("2 repeated blocks (FluxSingleTransformerBlock, "
                                    "FluxTransformerBlock), by diffusers")
    assert compiled["graphs_compiled_per_warmup_iteration"] == [2, 0]
    assert compiled["graphs_compiled_during_measurement"] == 0
    assert "Compiling at the first call: 2 repeated blocks" in proc.stderr


def test_compile_reaches_families_that_run_through_the_diffusers_pipeline(tmp_path):
    # Wan has no xDiT pipeline class, so xDiT never compiles it: the benchmark must.
    base = tmp_path / "out"
    proc = run_benchmark(["--use_torch_compile", "--compile_backend", "aot_eager",
                          "--benchmark_iters", "1", "--no_save_images", "workload:t2v",
                          "--workload.model_id", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                          "--workload.weights", "tiny", "--workload.inference_steps", "2",
                          "--workload.height", "64", "--workload.width", "96",
                          "--workload.num_frames", "5", "--workload.base_dir", str(base)],
                         tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = load_results(only_run_dir(base))["compile"]
    assert compiled["scope"] == "transformer"
    assert compiled["compiled"] == "forward of the denoiser"
    assert compiled["graphs_compiled_per_warmup_iteration"][0] >= 1
    assert compiled["graphs_compiled_during_measurement"] == 0


def test_teacache_and_fp8_t5_report_memory_and_quality(tmp_path, reference):
    run_dir, _ = _run(tmp_path, "--use_teacache", "--cache_threshold", "100",
                      "--use_fp8_t5_encoder", "--reference_run", str(reference))
    doc = load_results(run_dir)
    fp8 = doc["fp8_t5_encoder"]
    assert fp8["slot"] == "text_encoder_2" and fp8["weights"] == "qfloat8"
    assert 0 < fp8["bytes_after"] < fp8["bytes_before"] * 0.6
    q = doc["quality"]
    assert q["identical_images"] == 0 and 0 < q["mean_ssim"] < 1
    assert doc["configurations"]["use_teacache"] and doc["configurations"]["use_fp8_t5_encoder"]
    assert doc["compile"] is None


def test_fused_qkv_is_named_and_fp8_which_fuses_anyway_is_named_once():
    plan = plan_for("--fuse_qkv workload:t2i --workload.weights random")
    assert plan.options.fuse_qkv and plan.run_dir.name.endswith("+fuseqkv-on")
    assert results_configurations(plan)["fuse_qkv"] is True
    fp8 = plan_for("--fuse_qkv --quantize_denoiser fp8 workload:t2i --workload.weights random")
    assert not fp8.options.fuse_qkv and fp8.run_dir.name.endswith("+quantdenoiser-fp8")
    assert not plan_for("workload:t2i").options.fuse_qkv


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_families_that_claim_fused_qkv_are_the_ones_diffusers_fuses(family):
    # The registry's fuses_qkv decides before loading whether --fuse_qkv is refused; the real
    # tiny denoiser of each family says whether diffusers fuses anything.
    from mlenergy.diffusion.kernels import quantize
    from mlenergy.diffusion.models import pipelines
    from mlenergy.diffusion.models.registry import models_of_family

    spec = models_of_family(family)[0]
    torch.manual_seed(0)
    pipeline = pipelines.build_pipeline(spec, "tiny", dtype=torch.float32, device="cpu",
                                        max_sequence_length=spec.family.tiny_max_sequence_length)
    fused = quantize.fuse_qkv(getattr(pipeline, spec.family.denoiser_slot))
    assert (fused > 0) == FAMILIES[family].fuses_qkv, fused


@pytest.mark.parametrize("nproc", [1, 2])
def test_fused_qkv_changes_the_images_by_rounding_only(tmp_path, reference, nproc):
    run_dir, _ = _run(tmp_path, "--fuse_qkv", "--reference_run", str(reference), nproc=nproc)
    assert run_dir.name.endswith("+fuseqkv-on")
    doc = load_results(run_dir)
    # Tiny FLUX: one double-stream and one single-stream block, each with one attention.
    assert doc["fused_qkv"] == {"fused_attention_layers": 2}
    assert doc["configurations"]["fuse_qkv"] is True
    q = doc["quality"]
    # Same weights regrouped into one matmul: float32 rounding apart from the reference, far
    # closer than any lossy option (fbcache above reads well under 80 dB).
    assert q["num_images"] == 4
    assert q["identical_images"] == 4 or q["mean_psnr_db"] > 80, q


def test_compile_overlap_compiles_two_processes_blocks_with_collectives_reordered(tmp_path):
    run_dir, proc = _run(tmp_path, "--use_torch_compile", "--compile_scope", "blocks",
                         "--compile_overlap", nproc=2)
    assert run_dir.name.endswith("+compilescope-blocks+overlap-on")
    doc = load_results(run_dir)
    assert doc["configurations"]["compile_overlap"] is True
    compiled = doc["compile"]
    assert compiled["inductor_settings"]["reorder_for_compute_comm_overlap"] is True
    assert compiled["graphs_compiled_per_warmup_iteration"][0] >= 1
    assert compiled["graphs_compiled_during_measurement"] == 0
    assert "collectives reordered to overlap computation" in proc.stderr


def test_two_processes_use_xdit_attention_with_the_chosen_backend_and_fbcache(tmp_path,
                                                                              reference):
    run_dir, _ = _run(tmp_path, "--attention_backend", "sdpa_math", "--use_fbcache", nproc=2)
    attention = load_results(run_dir)["attention"]
    assert attention["used"] == "xfuser:SDPA_MATH"
    assert "xFuserFluxAttnProcessor" in attention["processors"]


def _error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_an_incomparable_reference_is_refused_before_anything_runs(tmp_path, reference):
    base = tmp_path / "out"
    args = with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], *STEPS4)
    line = _error_line(run_benchmark([*args, "--workload.seed", "7", "--reference_run",
                                      str(reference)], tmp_path))
    assert "has seed 48105 but this run has 7" in line
    line = _error_line(run_benchmark(with_flags(args, "--benchmark_iters", "3", "--reference_run",
                                                str(reference)), tmp_path))
    assert "fewer than this run's 3" in line
    line = _error_line(run_benchmark([*args, "--no_save_images", "--reference_run",
                                      str(reference)], tmp_path))
    assert "drop --no_save_images" in line
    incomplete = tmp_path / "incomplete"
    shutil.copytree(reference, incomplete)
    (incomplete / "requests.json").unlink()
    line = _error_line(run_benchmark([*args, "--reference_run", str(incomplete)], tmp_path))
    assert "requests.json is missing" in line
    # Other prompts are known only once the prompt pool is read: still refused before the model
    # loads and before the run directory exists.
    prompts = tmp_path / "other.txt"
    prompts.write_text("a green cube\na yellow cone\na purple torus\na grey sphere\n")
    line = _error_line(run_benchmark([*args, "--workload.prompts_file", str(prompts),
                                      "--reference_run", str(reference)], tmp_path))
    assert "used other prompts" in line
    assert not base.exists()
    assert json.loads((reference / "results.json").read_text())["num_iterations"] == 2


def test_a_second_process_finds_the_first_ones_compiled_kernels(tmp_path):
    """What `compile.kernel_cache` reports: inductor's on-disk cache, missed by the first run
    that compiles a graph and hit by the next one (as in a sweep)."""
    script = (
        "import json, torch\n"
        "from mlenergy.diffusion.probes.compile import kernel_cache_report\n"
        "torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.randn(8))\n"
        "print(json.dumps(kernel_cache_report()))\n"
    )
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "kernels"))
    reports = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = reports
    assert first["dir"] == second["dir"] == str(tmp_path / "kernels")
    assert (first["fx_graph_cache_hits"], first["fx_graph_cache_misses"]) == (0, 1)
    assert (second["fx_graph_cache_hits"], second["fx_graph_cache_misses"]) == (1, 0)


def test_fp8_denoiser_is_refused_without_fp8_gpus_and_named_in_the_run_directory():
    with pytest.raises(ConfigError, match="needs NVIDIA GPUs with FP8 tensor cores"):
        plan_for("--quantize_denoiser fp8 workload:t2i --workload.weights tiny", device_type="cpu")
    # Planned here for GPUs elsewhere (a sweep emitting Slurm arrays): named, not refused.
    plan = plan_for("--quantize_denoiser fp8 --use_torch_compile --compile_scope blocks "
                    "workload:t2i --workload.weights random")
    assert plan.options.quantize_denoiser == "fp8"
    assert plan.run_dir.name.endswith("+compilescope-blocks+quantdenoiser-fp8")
    assert results_configurations(plan)["quantize_denoiser"] == "fp8"


def results_configurations(plan):
    from mlenergy.diffusion.output import results_writer as results

    return results.configurations(plan)
