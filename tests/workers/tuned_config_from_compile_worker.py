"""A kernel's tuned configuration read in a spawned compile worker, as inductor's workers read
it, and sent back pickled to this process: prints whether it still carries coordinate descent's
mark. Run as `python tuned_config_from_compile_worker.py KERNEL_FILE fixed|unfixed`; with
`fixed` the benchmark's `reuse_tuned_kernel_configs` runs first, as `--compile_autotune` runs it."""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from torch._inductor.runtime import triton_heuristics
from torch._inductor.runtime.autotune_cache import AutotuneCache
from torch._inductor.runtime.triton_compat import Config

TUNING = {"coordinate_descent_tuning": True}


def main(kernel_file: str, mode: str) -> None:
    state = None
    if mode == "fixed":
        from mlenergy.diffusion.process import torch_compat

        state = torch_compat.reuse_tuned_kernel_configs()
    compiled = [Config({"XBLOCK": 128}, num_warps=4, num_stages=1)]
    # What a cold run's coordinate descent left beside the kernel.
    AutotuneCache.create(TUNING, kernel_file, triton_heuristics.hash_configs(compiled)).save(
        Config({"XBLOCK": 256}, num_warps=4, num_stages=1), 5_000_000_000,
        found_by_coordesc=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as workers:
        (winner,), _, info = workers.submit(triton_heuristics.check_autotune_cache, compiled,
                                            kernel_file, TUNING).result()
    print(json.dumps({"cache": info["autotune_cache_state"], "kwargs": winner.kwargs,
                      "tuned": getattr(winner, "found_by_coordesc", False), "state": state}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
