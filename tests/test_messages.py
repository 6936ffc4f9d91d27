"""What a person reads when loading goes wrong, or goes slowly: a hub failure is one line that
says what to do, and loading bars never reach a log file as `\\r` frames.

The hub is stood in for by an endpoint nothing listens on (HF_ENDPOINT on a loopback port that
refuses connections) and a cache laid out as huggingface_hub lays it out (tests/fakehub.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, offline_env, only_run_dir, run_benchmark
from fakehub import add_snapshot, save_tiny_flux

PIXART = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
# Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
UNREACHABLE = "http://127.0.0.1:9"
SMALL = ["--workload.height", "64", "--workload.width", "64", "--workload.inference_steps", "1",
         "--benchmark_iters", "1"]


def _online_but_unreachable(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """The benchmark as a user starts it with HF_HUB_OFFLINE unset and the hub out of reach."""
    env = offline_env(tmp_path, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=UNREACHABLE)
    env.pop("HF_HUB_OFFLINE")
    return subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_an_uncached_model_with_the_hub_unreachable_is_one_line_before_anything_is_written(
        tmp_path):
    base = tmp_path / "out"
    proc = _online_but_unreachable(tmp_path, ["workload:t2i", "--workload.model_id", PIXART,
                                              "--workload.base_dir", str(base), *SMALL])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"error: {PIXART} is not in the local Hugging Face cache ({tmp_path / 'hf' / 'hub'}) and "
        f"the Hugging Face hub could not be reached at HF_ENDPOINT {UNREACHABLE}: download it "
        f"first with `hf download {PIXART}` where there is network (the same HF_HOME), or "
        "measure the architecture without weights: --workload.weights random")
    assert "HF_HUB_OFFLINE" not in proc.stderr and "local_files_only" not in proc.stderr
    assert not base.exists()


def test_weights_that_fail_to_load_end_the_run_in_one_line_with_the_traceback_in_the_log(
        tmp_path):
    """The cache holds a complete tiny pipeline whose transformer weights are damaged: every
    check before loading passes (components, configs, weight files, memory), loading fails."""
    source = save_tiny_flux(tmp_path / "tiny")
    for weights in (source / "transformer").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:64])
    add_snapshot(tmp_path / "hf", "acme/half-cached", "c" * 40, source=source)
    base = tmp_path / "out"
    proc = _online_but_unreachable(tmp_path, [
        "workload:t2i", "--workload.model_id", "acme/half-cached", "--workload.family", "flux",
        "--workload.base_dir", str(base), *SMALL])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "\r" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        "error: could not load weights for acme/half-cached from acme/half-cached ("), errors
    assert errors[0].endswith("download them first (`hf download acme/half-cached`), or measure "
                              "the architecture with --workload.weights random")
    log = (only_run_dir(base) / "driver_log.txt").read_text()
    assert "Traceback" in log and "rank 0 failed" in log


def test_loading_bars_stay_out_of_a_log_file(tmp_path):
    """A local pipeline directory loads through diffusers' from_pretrained, which draws its
    "Loading pipeline components" bar unless told not to."""
    model = save_tiny_flux(tmp_path / "tiny-flux")
    base = tmp_path / "out"
    proc = run_benchmark(["workload:t2i", "--workload.model_id", str(model),
                          "--workload.family", "flux", "--workload.base_dir", str(base),
                          *SMALL], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (only_run_dir(base) / "driver_log.txt").read_text()
    for text in (proc.stderr, proc.stdout, log):
        assert "\r" not in text and "Loading pipeline components" not in text
        assert "it/s]" not in text
