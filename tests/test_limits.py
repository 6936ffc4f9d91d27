"""Absurd, damaged and ambiguous input: refused in one line, exit 2, before any model loads."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import ENTRY, REPO, TINY_FLUX, _free_port, load_results, offline_env, \
    only_run_dir, run_benchmark
from mlenergy.diffusion import benchmark
from mlenergy.diffusion.inputs.config import ConfigError, PROMPT_DATASET, parse_cli
from mlenergy.diffusion.planning import limits, prompts
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch
from mlenergy.diffusion.results import files

# Refused before anything runs: sizes and steps may stay the model's, and tests set them.
TINY = ["workload:text-to-image", "--workload.weights", "tiny"]
TINY_WAN = ["workload:t2v", "--workload.model_id", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            "--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLENERGY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLENERGY_COLLECTIVE_TIMEOUT_S", raising=False)


def refusal(capsys, tmp_path, *flags: str, head=TINY) -> str:
    """Run the benchmark's main on `flags`; it must refuse in exactly one line and write
    nothing."""
    base = tmp_path / "out"
    started = time.monotonic()
    argv = [*head, *flags] if "--workload.base_dir" in flags else \
        [*head, "--workload.base_dir", str(base), *flags]
    code = benchmark.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert time.monotonic() - started < 30
    assert not base.exists()
    return lines[0]


@pytest.mark.parametrize("flags", [["--workload.guidance_scale", "nan"],
                                   ["--workload.guidance_scale", "inf"],
                                   ["--workload.guidance_scale=-inf"]])
def test_numbers_that_are_not_finite_are_refused(capsys, tmp_path, flags):
    assert "give a finite number" in refusal(capsys, tmp_path, *flags)


def test_json_is_written_without_nan(tmp_path):
    path = tmp_path / "doc.json"
    with pytest.raises(ValueError):
        files.write_json_atomically(path, {"energy": math.nan})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, says", [
    (["--workload.seed", "-1"], "outside 0..2^64-1"),
    (["--workload.seed", str(2**64)], "outside 0..2^64-1"),
    (["--workload.seed", str(2**64 - 1), "--benchmark_iters", "2"], "passes 2^64-1"),
])
def test_seeds_must_fit_the_generators(capsys, tmp_path, flags, says):
    assert says in refusal(capsys, tmp_path, *flags)


def test_the_highest_seed_and_a_text_prompt_starting_with_a_brace_run(tmp_path):
    """Seed 2^64-1 runs (warm-up seeds count down from it), and a text file whose first prompt
    starts with `{` is prompts, not broken JSONL."""
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("{curly} braces around a red cube\na blue ball\n")
    base = tmp_path / "out"
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--workload.seed",
                          str(2**64 - 1), "--benchmark_iters", "1", "--no_count_flops",
                          "--workload.prompts_file", str(prompts_file)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = load_results(only_run_dir(base))
    assert doc["seed"] == 2**64 - 1
    assert sorted(doc["iterations"][0]["prompts"]) == ["a blue ball",
                                                       "{curly} braces around a red cube"]


@pytest.mark.parametrize("flags, says", [
    (["--workload.batch_size", str(10**9)], "--workload.batch_size 1,000,000,000 is above"),
    (["--workload.height", str(10**6)], "--workload.height 1,000,000 is above"),
    (["--workload.inference_steps", str(10**7)], "--workload.inference_steps 10,000,000 is above"),
    (["--benchmark_iters", str(10**6)], "--benchmark_iters 1,000,000 is above"),
    (["--workload.batch_size", "1000", "--benchmark_iters", "5000"], "5,001,000 prompts"),
    (["--workload.batch_size", "1024", "--workload.height", "8192", "--workload.width", "8192"],
     "GB of activations (decoding 68,719,476,736 pixels)"),
])
def test_absurd_sizes_and_counts_are_refused_before_anything_is_built(capsys, tmp_path, flags,
                                                                      says):
    assert says in refusal(capsys, tmp_path, *flags)


def test_absurd_frame_counts_are_refused(capsys, tmp_path):
    line = refusal(capsys, tmp_path, "--workload.num_frames", str(10**6 + 1), head=TINY_WAN)
    assert "--workload.num_frames 1,000,001 is above" in line


def test_the_activation_bound_leaves_real_workloads_alone():
    """The estimate is a lower bound: the published workloads stay far below a GPU's memory."""
    for argv in (["workload:t2i", "--workload.weights", "random"],
                 ["workload:t2i", "--workload.weights", "random", "--workload.batch_size", "8"],
                 ["workload:t2i", "--workload.weights", "random", "--workload.model_id",
                  "stabilityai/stable-diffusion-xl-base-1.0"],
                 ["workload:t2v", "--workload.weights", "random", "--workload.model_id",
                  "Wan-AI/Wan2.1-T2V-14B-Diffusers"],
                 ["workload:t2v", "--workload.weights", "random", "--workload.model_id",
                  "tencent/HunyuanVideo"]):
        plan = make_plan(parse_cli(argv), Launch(device_type="cuda", visible_gpus=1))
        need, _ = limits.activation_floor_bytes(plan)
        assert 10**8 < need < 40 * 10**9, (argv, need)


def test_prompts_longer_than_the_encoders_read_are_refused(capsys, tmp_path):
    long_file = tmp_path / "long.txt"
    long_file.write_text("a short one\n" + "word " * 20_000 + "\n")
    line = refusal(capsys, tmp_path, "--workload.prompts_file", str(long_file))
    assert f"prompts file {long_file}: prompt 2 has 99,999 characters" in line


@pytest.mark.parametrize("content, says", [
    ('"a string of prompts"', "holds a JSON str"),
    ('{"prompt": "x"}', "holds a JSON dict"),
    ("[]", "an empty list"),
    ('["a cat", "a d', "damaged (Unterminated string"),
    ('["a cat", 7]', "entry 1 is not a non-empty string"),
])
def test_a_damaged_prompt_cache_is_refused_naming_the_file(capsys, tmp_path, content, says):
    cache = prompts.cache_file(PROMPT_DATASET)
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    line = refusal(capsys, tmp_path)
    assert line.startswith(f"error: prompt cache {cache} is damaged") and says in line
    assert f"delete {cache}" in line


def test_base_dir_must_be_a_writable_directory(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "is a file" in refusal(capsys, tmp_path, "--workload.base_dir", str(a_file))
    under = refusal(capsys, tmp_path, "--workload.base_dir", str(a_file / "runs"))
    assert f"lies under {a_file}, a file" in under
    # Read-only even for root: a read-only mount.
    assert os.path.isdir("/proc/sys") and not os.access("/proc/sys", os.W_OK)
    line = refusal(capsys, tmp_path, "--workload.base_dir", "/proc/sys/mlenergy-runs")
    assert "/proc/sys is not writable" in line


@pytest.mark.parametrize("index, says", [("{not json", "is not readable JSON"),
                                         ("{}", "names no pipeline class")])
def test_a_local_model_with_a_broken_model_index_is_refused(capsys, tmp_path, index, says):
    model = tmp_path / "my-flux"
    model.mkdir()
    (model / "model_index.json").write_text(index)
    line = refusal(capsys, tmp_path, head=["workload:t2i", "--workload.model_id", str(model),
                                           "--workload.family", "flux"])
    assert f"{model / 'model_index.json'} " in line and says in line


def test_a_prompts_path_that_is_a_directory_or_a_fifo_is_refused(capsys, tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    assert "is a directory" in refusal(capsys, tmp_path, "--workload.prompts_file", str(folder))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    line = refusal(capsys, tmp_path, "--workload.prompts_file", str(fifo))
    assert "is not a regular file" in line


def test_a_jsonl_file_still_reads_as_jsonl(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text('{"prompt": "a red cube"}\n{"prompt": "a blue ball"}\n')
    assert prompts.read_prompts_file(path) == ["a red cube", "a blue ball"]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_collective_timeout_is_refused(capsys, tmp_path, monkeypatch, value):
    monkeypatch.setenv("MLENERGY_COLLECTIVE_TIMEOUT_S", value)
    assert f"MLENERGY_COLLECTIVE_TIMEOUT_S='{value}'" in refusal(capsys, tmp_path)


@pytest.mark.parametrize("flags, says", [
    (["--workload.base_dir", ""], "--workload.base_dir is empty"),
    (["--workload.batch_size", "2", "--workload.batch_size=3"],
     "--workload.batch_size=3 is given twice"),
    (["--use_torch_compile", "--no_use_torch_compile"], "--no_use_torch_compile is given twice (--use_torch_compile before it)"),
    (["--workload.batch_size", "two"], "Error parsing --workload.batch_size"),
    (["--bogus"], "Unrecognized options: --bogus"),
])
def test_command_line_errors_are_one_line_with_a_usage_hint(capsys, tmp_path, flags, says):
    with pytest.raises(SystemExit) as exit_:
        benchmark.main([*TINY, *flags])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    if "given twice" not in says and "empty" not in says:
        assert lines[0].endswith("see `mlenergy-diffusion run --help`")


def test_bad_input_under_torchrun_is_one_line_from_one_rank(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(_free_port()), str(ENTRY), *TINY, "--ulysses_degree", "2",
           "--workload.height", "100", "--workload.base_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=REPO, env=offline_env(tmp_path), capture_output=True,
                          text=True, timeout=240)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("error: ")]
    assert errors == ["error: --workload.height 100 must be a positive multiple of 16 for "
                      "black-forest-labs/FLUX.1-dev (VAE downsampling x patch size)"]
    # Each rank exits 2; torchrun reports its workers' status (its own is 1 whatever they say).
    assert "exitcode  : 2" in proc.stderr and proc.returncode != 0
    assert not (tmp_path / "out").exists()


def _plan(argv: str, monkeypatch, *, gpu_gb: float | None = None, host_gb: float = 1000,
          **launch):
    """A plan on a machine whose GPUs hold `gpu_gb` and whose host has `host_gb` available."""
    monkeypatch.setattr(limits, "host_available_bytes", lambda: int(host_gb * 1e9))
    real = limits._device_memory_bytes
    monkeypatch.setattr(limits, "_device_memory_bytes",
                        lambda kind: int(gpu_gb * 1e9) if kind == "cuda" else real(kind))
    return make_plan(parse_cli(argv.split()), Launch(**launch))


def test_weights_are_counted_from_the_architecture_at_the_runs_dtype():
    plan = make_plan(parse_cli(["workload:t2i", "--workload.weights", "random"]),
                     Launch(device_type="cuda", visible_gpus=1))
    size, what = limits.weight_bytes(plan)
    # FLUX.1-dev: transformer 11.90 B, T5-XXL 4.76 B, CLIP-L 0.12 B, VAE 0.08 B parameters.
    assert 16.8e9 * 2 < size < 16.95e9 * 2 and what == "16.87 B parameters in bfloat16"
    assert limits.weight_bytes(make_plan(parse_cli(TINY), Launch())) is None


def test_weights_larger_than_a_gpu_are_refused_before_loading(monkeypatch):
    flux = "workload:t2i --workload.weights random"
    with pytest.raises(ConfigError) as refused:
        _plan(flux, monkeypatch, gpu_gb=24, device_type="cuda", visible_gpus=1)
    assert str(refused.value).startswith(
        "black-forest-labs/FLUX.1-dev's weights need 33.7 GB (16.87 B parameters in bfloat16), "
        "more than the 24.0 GB of each GPU's memory; use --enable_sequential_cpu_offload")
    # Sequence parallelism replicates the weights: more GPUs do not help, and offload needs one.
    with pytest.raises(ConfigError, match="need 33.7 GB .* 24.0 GB of each GPU's memory; use a "
                                          "machine with more memory"):
        _plan(f"--ulysses_degree 2 {flux}", monkeypatch, gpu_gb=24, device_type="cuda",
              visible_gpus=2, world_size=2, local_world_size=2)
    assert _plan(flux, monkeypatch, gpu_gb=80, device_type="cuda", visible_gpus=1)


def test_offloaded_weights_must_fit_the_host_not_the_gpu(monkeypatch):
    offload = "--enable_sequential_cpu_offload workload:t2i --workload.weights random"
    assert _plan(offload, monkeypatch, gpu_gb=24, host_gb=64, device_type="cuda",
                 visible_gpus=1)
    with pytest.raises(ConfigError, match=r"need 33.7 GB .*more than the 20.0 GB of host memory "
                                          r"available \(MemAvailable\)"):
        _plan(offload, monkeypatch, gpu_gb=80, host_gb=20, device_type="cuda", visible_gpus=1)


def test_weights_and_activations_share_the_gpu(monkeypatch):
    argv = ("workload:t2i --workload.weights random --workload.batch_size 16 "
            "--workload.height 2048 --workload.width 2048")
    plan = _plan(argv, monkeypatch, gpu_gb=200, device_type="cuda", visible_gpus=1)
    activations = limits.activation_floor_bytes(plan)[0]
    assert activations < 40e9  # alone, they would fit a 40 GB GPU; with the weights, not
    with pytest.raises(ConfigError, match=r"GB of activations .* less the 33.7 GB of weights"):
        _plan(argv, monkeypatch, gpu_gb=(activations + 33e9) / 1e9, device_type="cuda",
              visible_gpus=1)


def test_cpu_processes_each_hold_a_copy_of_the_weights(monkeypatch):
    argv = "workload:t2i --workload.weights random --workload.model_id " \
        "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers --workload.dtype bfloat16"
    assert _plan(argv, monkeypatch, host_gb=10)  # 3.61 B parameters: 7.2 GB
    with pytest.raises(ConfigError, match=r"need 14.4 GB \(3.61 B parameters in bfloat16, a copy "
                                          r"in each of 2 processes\), more than the 10.0 GB"):
        _plan(f"--ulysses_degree 2 {argv}", monkeypatch, host_gb=10, world_size=2,
              local_world_size=2)


def test_pretrained_weights_count_only_the_configs_that_are_the_models_own(monkeypatch):
    """A checkpoint whose text encoders' configs are not at hand: the family's reference
    encoders stand in for the defaults, but are not what loads, so they are not counted."""
    plan = make_plan(parse_cli(["workload:t2i", "--workload.weights", "random"]),
                     Launch(device_type="cuda", visible_gpus=1))
    stand_ins = {"text_encoder": "the flux family", "text_encoder_2": "the flux family",
                 "transformer": "checkpoint", "vae": "checkpoint"}
    spec = dataclasses.replace(plan.spec, defaults_source=stand_ins)
    pretrained = dataclasses.replace(plan, spec=spec, weights="pretrained")
    assert limits.weight_bytes(pretrained)[1] == "11.99 B parameters in bfloat16"
    assert limits.weight_bytes(dataclasses.replace(pretrained, weights="random"))[1] == \
        "16.87 B parameters in bfloat16"


def test_every_registered_model_fits_an_80_gb_gpu_in_its_dtype(monkeypatch):
    from mlenergy.diffusion.models.registry import MODELS

    for model_id, spec in MODELS.items():
        sub = "t2v" if spec.task == "text-to-video" else "t2i"
        _plan(f"workload:{sub} --workload.weights random --workload.model_id {model_id}",
              monkeypatch, gpu_gb=80, device_type="cuda", visible_gpus=1)
