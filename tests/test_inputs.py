"""Inputs a new user types, run through the real CLI: each bad one ends in one line `error: ...`
and exit 2 before any model loads, with no traceback and nothing under the base directory; and a
run whose results are whole ends with exit 0 whatever its teardown meets."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from conftest import ENTRY, REPO, _free_port, load_results, offline_env, only_run_dir, \
    run_benchmark

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
    from mlenergy.diffusion import limits

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
