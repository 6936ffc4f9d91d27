"""Inputs a new user types, run through the real CLI: each bad one ends in one line `error: ...`
and exit 2 before any model loads, with no traceback and nothing under the base directory; and a
run whose results are whole ends with exit 0 whatever its teardown meets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO, _free_port, load_results, offline_env, only_run_dir, run_benchmark, \
    with_flags
from fakehub import FLUX_DEV, SCHNELL_CONFIGS, RefusingHub, add_snapshot, save_tiny_flux

TINY = ["workload:text-to-image", "--workload.weights", "tiny", "--workload.batch_size", "1",
        "--workload.height", "64", "--workload.width", "64", "--workload.inference_steps", "2"]
SLOW_WRITER = REPO / "tests" / "workers" / "benchmark_slow_writer.py"


def one_line_refusal(proc: subprocess.CompletedProcess, base) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not base.exists() or not any(base.iterdir()), list(base.rglob("*"))
    return lines[0]


@pytest.mark.parametrize("env, says", [
    ({"RANK": "1", "WORLD_SIZE": "2"}, "RANK=1 WORLD_SIZE=2 set, but this process was not "
                                       "started by torchrun"),
    ({"WORLD_SIZE": "4"}, "start several processes with `torchrun --nproc_per_node=4"),
    ({"LOCAL_RANK": "1"}, "unset them for one process (`env -u LOCAL_RANK python"),
    ({"RANK": "one"}, "RANK='one' is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
      "TORCHELASTIC_RUN_ID": "x"}, "RANK=2 is not one of 0..WORLD_SIZE-1 (WORLD_SIZE=2)"),
    ({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"},
     "LOCAL_RANK, LOCAL_WORLD_SIZE not set although torchrun started this process"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2",
      "TORCHELASTIC_RUN_ID": "x"}, "LOCAL_RANK=2 is not one of 0..LOCAL_WORLD_SIZE-1"),
])
def test_a_launch_environment_that_is_not_torchruns_is_one_line(tmp_path, env, says):
    base = tmp_path / "out"
    proc = run_benchmark([*TINY, "--workload.base_dir", str(base)], tmp_path, **env)
    assert says in one_line_refusal(proc, base)


def test_one_process_values_without_torchrun_run(tmp_path):
    base = tmp_path / "out"
    proc = run_benchmark([*TINY, "--workload.base_dir", str(base), "--benchmark_iters", "1",
                          "--no_count_flops"], tmp_path, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_results(only_run_dir(base))["num_processes"] == 1


def test_a_rank_that_finishes_first_does_not_fail_a_run_whose_results_are_written(tmp_path):
    """Rank 0 writes results.json and then stays busy (a plot, a slow file system) longer than
    the collective timeout: rank 1 used to time out in a barrier after the results and fail a
    complete run (exit 1); now nothing waits for rank 0 once the results are gathered."""
    base = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(_free_port()), str(SLOW_WRITER), "--ulysses_degree", "2", *TINY,
           "--workload.base_dir", str(base), "--benchmark_iters", "1", "--no_count_flops"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=offline_env(tmp_path, MLENERGY_COLLECTIVE_TIMEOUT_S="3",
                                          SLOW_WRITER_S="8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed" not in proc.stderr, proc.stderr[-3000:]
    assert load_results(only_run_dir(base))["num_processes"] == 2


def test_full_size_weights_larger_than_the_host_are_refused_at_once(tmp_path):
    """FLUX.1-dev in float32 on a CPU host: 67.5 GB of weights. It used to allocate for most
    of a minute and die; now it is refused before anything is built."""
    from mlenergy.diffusion.planning import limits

    if limits.host_available_bytes() > 70e9:
        pytest.skip("this host has the memory for FLUX.1-dev in float32")
    base = tmp_path / "out"
    started = time.monotonic()
    proc = run_benchmark(["workload:t2i", "--workload.weights", "random", "--workload.base_dir",
                          str(base)], tmp_path)
    line = one_line_refusal(proc, base)
    assert re.fullmatch(r"error: black-forest-labs/FLUX.1-dev's weights need 67.5 GB \(16.87 B "
                        r"parameters in float32\), more than the [\d.,]+ GB of host memory "
                        r"available \(MemAvailable\); use .*", line), line
    assert time.monotonic() - started < 60


def _parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def _write(path, content: bytes | str):
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


def _folder(path):
    path.mkdir()
    return str(path)


def _model_without_components(tmp):
    """model_index.json naming a FLUX pipeline, and nothing else."""
    index = {**SCHNELL_CONFIGS["model_index.json"]}
    _write(_folder_path(tmp / "my-flux") / "model_index.json", json.dumps(index))
    return ["--workload.model_id", str(tmp / "my-flux"), "--workload.weights", "pretrained"]


def _model_without_weights(tmp):
    model = save_tiny_flux(tmp / "my-flux")
    for weights in (model / "transformer").glob("*.safetensors"):
        weights.unlink()
    return ["--workload.model_id", str(model), "--workload.weights", "pretrained"]


def _model_with_a_broken_config(tmp):
    model = _folder_path(tmp / "my-flux")
    _write(model / "model_index.json", json.dumps(SCHNELL_CONFIGS["model_index.json"]))
    _write(_folder_path(model / "transformer") / "config.json",
           json.dumps({"_class_name": "FluxTransformer2DModel", "num_attention_heads": "24"}))
    return ["--workload.model_id", str(model), "--workload.weights", "random"]


def _folder_path(path):
    path.mkdir(parents=True)
    return path


LONG = "x" * 300
# name -> (what the user types, given a scratch folder; extra environment; what the line says)
BAD_INPUTS = {
    "parquet-without-the-column": (
        lambda t: ["--workload.prompt_dataset", _parquet(t / "p.parquet", caption=["a cat"])], {},
        "p.parquet has no 'prompt' column (it has: caption); the prompts must be in a column"),
    "parquet-unreadable": (
        lambda t: ["--workload.prompt_dataset", _write(t / "p.parquet", b"not parquet")], {},
        "p.parquet is not a readable parquet file (Parquet magic bytes not found"),
    "parquet-of-blanks": (
        lambda t: ["--workload.prompt_dataset", _parquet(t / "p.parquet", prompt=["", "  "])],
        {}, "p.parquet has no non-empty 'prompt' strings"),
    "dataset-folder-without-parquet": (
        lambda t: ["--workload.prompt_dataset", _folder(t / "data")], {},
        "data holds no .parquet files"),
    "dataset-path-missing": (
        lambda t: ["--workload.prompt_dataset", str(t / "missing.parquet")], {},
        "is neither an existing local parquet file or directory nor a Hugging Face dataset id"),
    "dataset-mistyped-offline": (
        lambda t: ["--workload.prompt_dataset", "data-is-better-together/open-image-preference"],
        {}, "prompt dataset data-is-better-together/open-image-preference is not in the prompt "
            "cache"),
    "dataset-empty": (lambda t: ["--workload.prompt_dataset", ""], {},
                      "--workload.prompt_dataset is empty"),
    "prompt-cache-dir-a-file": (
        lambda t: ["--workload.prompt_cache_dir", _write(t / "cache", "")], {},
        "the prompt cache directory"),
    "requests-file-without-requests": (
        lambda t: ["--workload.prompts_file", _write(t / "requests.json", "[]")], {},
        "requests.json holds no requests"),
    "prompts-file-of-blank-lines": (
        lambda t: ["--workload.prompts_file", _write(t / "p.txt", "\n  \n\n")], {},
        "p.txt has no prompts"),
    "prompts-file-in-latin-1": (
        lambda t: ["--workload.prompts_file", _write(t / "p.txt", "caf\xe9\n".encode("latin-1"))],
        {}, "p.txt is not UTF-8 text"),
    "prompts-file-name-too-long": (
        lambda t: ["--workload.prompts_file", str(t / LONG)], {}, "File name too long"),
    "local-model-without-components": (
        _model_without_components, {}, "is not a complete FluxPipeline: the component folder(s) "
                                       "scheduler/, text_encoder/"),
    "local-model-without-weights": (
        _model_without_weights, {}, "is not a complete FluxPipeline: transformer/ holds no "
                                    "weight files"),
    "local-model-with-a-broken-config": (
        _model_with_a_broken_config, {}, "the transformer config does not build a "
                                         "FluxTransformer2DModel (TypeError: "),
    "model-id-a-file": (lambda t: ["--workload.model_id", _write(t / "model", "")], {},
                        "is neither a registered model, an existing directory, nor a"),
    "family-unknown": (lambda t: ["--workload.family", "flux2"], {},
                       "unknown --workload.family 'flux2'"),
    "revision-of-a-local-folder": (
        lambda t: ["--workload.model_id", _folder(t / "m"), "--workload.revision", "v2"], {},
        "is a local directory, which has no revisions"),
    "uncached-model-hub-unreachable": (
        lambda t: ["--workload.weights", "pretrained"],
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
        "black-forest-labs/FLUX.1-dev is not in the local Hugging Face cache"),
    "run-directory-name-too-long": (
        lambda t: ["--workload.base_dir", str(t / "out" / LONG)], {},
        "holds a name of 300 bytes"),
    "negative-batch": (lambda t: ["--workload.batch_size", "-2"], {},
                       "--workload.batch_size must be at least 1, got -2"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case):
    typed, env, says = BAD_INPUTS[case]
    base = tmp_path / "out"
    args = with_flags([*TINY, "--workload.base_dir", str(base)], *typed(tmp_path))
    proc = run_benchmark(args, tmp_path, **env)
    line = one_line_refusal(proc, base)
    assert says in line, line
    assert not base.exists()


def test_videos_that_could_not_be_written_are_refused_before_the_model_loads(tmp_path):
    """Seen on an H100 (2026-12-05): a GPU image without imageio-ffmpeg failed a Wan run at its
    first measured video, after minutes of loading and compiling. The same fault is found first
    now; without saving videos the run needs no writer and goes on."""
    shim = tmp_path / "shim"
    (shim / "imageio_ffmpeg").mkdir(parents=True)
    (shim / "imageio_ffmpeg" / "__init__.py").write_text(
        'raise ImportError("this image ships no ffmpeg")\n')
    base = tmp_path / "out"
    video = ["workload:text-to-video", "--workload.model_id", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
             "--workload.weights", "tiny", "--workload.height", "64", "--workload.width", "64",
             "--workload.num_frames", "5", "--workload.inference_steps", "2",
             "--benchmark_iters", "1", "--workload.base_dir", str(base)]
    no_writer = f"{shim}:{REPO}"
    line = one_line_refusal(run_benchmark(video, tmp_path, PYTHONPATH=no_writer), base)
    assert line.startswith("error: saving videos needs ffmpeg through imageio-ffmpeg"), line
    assert line.endswith("pip install imageio-ffmpeg, or pass --no_save_images"), line
    proc = run_benchmark([*video, "--no_save_images"], tmp_path, PYTHONPATH=no_writer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_results(only_run_dir(base))["total_videos"] == 1


def test_a_partly_cached_pipeline_offline_says_to_download_it_whole(tmp_path):
    """Planning an unregistered id once brings its configs into the cache: that is not the
    pipeline, and loading it offline used to fail with a traceback."""
    home = tmp_path / "hf"
    add_snapshot(home, FLUX_DEV, "0" * 40, files=SCHNELL_CONFIGS)
    base = tmp_path / "out"
    proc = run_benchmark(with_flags([*TINY, "--workload.base_dir", str(base)],
                                    "--workload.weights", "pretrained"), tmp_path,
                         HF_HOME=str(home))
    line = one_line_refusal(proc, base)
    assert "is not a complete FluxPipeline: the component folder(s) text_encoder/" in line
    assert line.endswith("download it whole first (`hf download black-forest-labs/FLUX.1-dev`),"
                         " or measure the architecture with --workload.weights random")


def test_a_mistyped_dataset_with_the_hub_answering_is_refused_on_every_rank(tmp_path):
    """The hub answers, and has no such dataset: rank 0 finds out while reading prompts, and
    every rank ends with exit 2 (the run used to measure the shipped prompts instead)."""
    base = tmp_path / "out"
    with RefusingHub({}) as hub:
        proc = run_benchmark(["--ulysses_degree", "2", *TINY, "--workload.base_dir", str(base),
                              "--workload.prompt_dataset", "acme/no-such-prompts"], tmp_path,
                             nproc=2, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                             HF_DATASETS_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and errors[0].startswith(
        "error: prompt dataset acme/no-such-prompts could not be read from the hub"), errors
    assert "exitcode  : 2" in proc.stderr and "exitcode  : 1" not in proc.stderr
    # The one traceback is torchrun's own, reporting its workers' status 2.
    assert proc.stderr.count("Traceback") == 1 and "ChildFailedError" in proc.stderr
    assert "failed:" not in proc.stderr
    assert not base.exists() or not list(base.rglob("*"))


def test_the_default_dataset_offline_falls_back_and_says_so(tmp_path):
    base = tmp_path / "out"
    proc = run_benchmark([*TINY, "--workload.base_dir", str(base), "--benchmark_iters", "1",
                          "--no_count_flops"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(base)
    said = ("Prompt dataset data-is-better-together/open-image-preferences-v1 is not cached at "
            f"{tmp_path / 'cache' / 'prompts'}")
    assert f"WARNING: {said}" in proc.stderr
    assert "using the 64 prompts shipped with the package instead" in \
        (run_dir / "driver_log.txt").read_text()
    assert load_results(run_dir)["prompt_source"] == "fallback"


@pytest.mark.parametrize("command", [["-m", "mlenergy.diffusion.benchmark", "--help"],
                                     ["-m", "mlenergy.diffusion.cli", "run", "--help"]])
def test_help_into_a_closed_pipe_ends_quietly(tmp_path, command):
    """`run --help | head`: the reader goes before the help is written. The pipe is closed
    before the process has imported anything, so every write meets it closed."""
    proc = subprocess.Popen([sys.executable, *command], cwd=REPO, env=offline_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and stderr == "", stderr
