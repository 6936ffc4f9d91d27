"""--compile_autotune's tuned kernel configurations, reused by a warm start: the replacement of
`CachingAutotuner.recheck_autotune_cache` (process/torch_compat.py, for torch 2.8-2.11, where
pytorch/pytorch#172819 re-tunes every kernel) run against inductor's real autotune cache on disk,
and left out on a torch that reuses them itself; and a tuned configuration read in a spawned
compile worker keeping its mark on the way back (pytorch/pytorch#181292)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import types

import torch
from torch._inductor.runtime import triton_heuristics
from torch._inductor.runtime.autotune_cache import AutotuneCache
from torch._inductor.runtime.triton_compat import Config

from mlenergy.diffusion.process import torch_compat

TUNING = {"coordinate_descent_tuning": True}


def _kernel(tmp_path, *configs: Config):
    """A statically launched kernel as the FX-graph cache hands it back: its compiled
    configurations (fresh objects, without the coordinate-descent mark), its file and meta."""
    kernel = triton_heuristics.CachingAutotuner.__new__(triton_heuristics.CachingAutotuner)
    kernel.compile_results = [types.SimpleNamespace(config=c) for c in configs]
    kernel.filename = str(tmp_path / "kernel_abc123.py")
    kernel.inductor_meta = dict(TUNING)
    kernel.fn = types.SimpleNamespace(fn=None)
    return kernel


def _tuned_earlier(tmp_path, compiled: list[Config], winner: Config) -> None:
    """What an earlier run's coordinate descent left in the cache for this kernel."""
    cache = AutotuneCache.create(TUNING, str(tmp_path / "kernel_abc123.py"),
                                 triton_heuristics.hash_configs(compiled))
    cache.save(winner, 5_000_000_000, found_by_coordesc=True)


def test_a_single_configuration_kernel_keeps_its_tuned_mark_from_the_cache(tmp_path):
    start = Config({"XBLOCK": 128}, num_warps=4, num_stages=1)
    _tuned_earlier(tmp_path, [start], Config({"XBLOCK": 128}, num_warps=4, num_stages=1))
    kernel = _kernel(tmp_path, Config({"XBLOCK": 128}, num_warps=4, num_stages=1))
    torch_compat._recheck_keeping_tuned_config(kernel, reload_kernel_from_src=None)
    assert kernel.autotune_cache_info["autotune_cache_state"] == "hit"
    (kept,) = kernel.compile_results
    # run() skips coordinate descent for a launcher whose config carries the mark.
    assert kept.config.found_by_coordesc is True


def test_of_several_compiled_configurations_the_cached_winner_is_kept(tmp_path):
    compiled = [Config({"XBLOCK": b}, num_warps=4, num_stages=1) for b in (64, 128, 256)]
    _tuned_earlier(tmp_path, compiled, Config({"XBLOCK": 256}, num_warps=4, num_stages=1))
    kernel = _kernel(tmp_path, *[Config({"XBLOCK": b}, num_warps=4, num_stages=1)
                                 for b in (64, 128, 256)])
    torch_compat._recheck_keeping_tuned_config(kernel, reload_kernel_from_src=None)
    (kept,) = kernel.compile_results
    assert kept.config.kwargs == {"XBLOCK": 256} and kept.config.found_by_coordesc is True


def test_without_a_cache_entry_nothing_is_marked_and_every_configuration_stays(tmp_path):
    for count in (1, 3):
        kernel = _kernel(tmp_path, *[Config({"XBLOCK": 32 * (i + 1)}, num_warps=4,
                                            num_stages=1) for i in range(count)])
        torch_compat._recheck_keeping_tuned_config(kernel, reload_kernel_from_src=None)
        assert kernel.autotune_cache_info["autotune_cache_state"] == "miss"
        assert len(kernel.compile_results) == count
        assert not any(getattr(r.config, "found_by_coordesc", False)
                       for r in kernel.compile_results)


def test_a_torch_that_reuses_tuned_configurations_itself_is_left_alone():
    source = torch_compat.inspect.getsource(
        triton_heuristics.CachingAutotuner.recheck_autotune_cache)
    method = triton_heuristics.CachingAutotuner.recheck_autotune_cache
    state = torch_compat.reuse_tuned_kernel_configs()
    if torch_compat.FAULTY_GUARD in source:  # torch 2.8-2.11
        assert triton_heuristics.CachingAutotuner.recheck_autotune_cache is \
            torch_compat._recheck_keeping_tuned_config
        assert state == "reused (the benchmark's fix for pytorch/pytorch#172819)"
    else:
        assert torch.__version__ >= (2, 12)
        assert triton_heuristics.CachingAutotuner.recheck_autotune_cache is method
        assert state.startswith("this torch's own")
    assert torch_compat.tuned_configs_state() == state


WORKER = pathlib.Path(__file__).parent / "workers" / "tuned_config_from_compile_worker.py"


def _read_in_a_compile_worker(kernel_file, mode: str) -> dict:
    done = subprocess.run([sys.executable, str(WORKER), str(kernel_file), mode],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_tuned_configuration_from_a_compile_worker_keeps_its_mark(tmp_path):
    read = _read_in_a_compile_worker(tmp_path / "fixed" / "kernel_abc123.py", "fixed")
    # The worker found the tuned winner, and this process got it back marked as tuned, so
    # CachingAutotuner.run does not tune it again.
    assert read["cache"] == "hit" and read["kwargs"] == {"XBLOCK": 256}
    assert read["tuned"] is True
    assert read["state"].endswith(
        "worker-compiled kernels: the benchmark's fix for pytorch/pytorch#181292")


def test_without_the_fix_the_worker_s_tuned_configuration_comes_back_unmarked(tmp_path):
    # The control: triton's Config.__setstate__ rebuilds only its own fields. Should a triton
    # keep the mark itself, the fix is not applied and this test says so.
    read = _read_in_a_compile_worker(tmp_path / "unfixed" / "kernel_abc123.py", "unfixed")
    assert read["cache"] == "hit" and read["kwargs"] == {"XBLOCK": 256}
    assert read["tuned"] is False
