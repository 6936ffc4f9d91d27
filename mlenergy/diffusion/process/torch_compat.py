"""A warm kernel cache that keeps its coordinate-descent tuning, on torches that lose it.

With coordinate-descent tuning on (--compile_autotune), inductor benchmarks block sizes and warps
for each Triton kernel at its first call and writes the winner beside the kernel in the cache
directory (`<kernel>.best_config`, marked `found_by_coordesc`). A later run that loads the
compiled graph from the FX-graph cache gets its kernels back through the static CUDA launcher
(`StaticAutotunerFuture`), which asks `CachingAutotuner.recheck_autotune_cache` whether a tuned
configuration is on disk. In torch 2.8 to 2.11 that method

- ignores the cache for a kernel compiled with a single configuration (its guard wants more
  than one), which is nearly every pointwise kernel, and
- keeps the compiled configuration without the cached mark `found_by_coordesc`,

so `CachingAutotuner.run` tunes every kernel again at every warm start: the 104 s that a fully
warm cache still spent on the FLUX FP8 first call (H200, torch 2.11; docs/benchmarks.md). This is
pytorch/pytorch#172819, fixed in torch 2.12. `reuse_tuned_kernel_configs` replaces the method
where the faulty guard is present; elsewhere it changes nothing.
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger("mlenergy.diffusion")

# The 2.8-2.11 guard that skips the cache for single-configuration kernels, as the source reads.
FAULTY_GUARD = "len(cached_configs) == 1 and len(configs) > 1"
UPSTREAM_ISSUE = "pytorch/pytorch#172819"
# How check_autotune_cache of those versions marks a hit, which the replacement relies on.
HIT_STATE = '"autotune_cache_state"] = "hit"'

_state: str | None = None


def reuse_tuned_kernel_configs() -> str:
    """Make warm starts reuse coordinate-descent results from the kernel cache; returns how this
    process reuses them (results.json `compile.kernel_cache.tuned_configs`)."""
    global _state
    if _state is not None:
        return _state
    try:
        from torch._inductor.runtime import triton_heuristics
    except ImportError:
        _state = "no inductor"
        return _state
    autotuner = triton_heuristics.CachingAutotuner
    try:
        source = inspect.getsource(autotuner.recheck_autotune_cache)
    except (AttributeError, OSError, TypeError):
        # No such method (another torch), or no source to read: whether this torch reuses
        # them is not known here, and nothing is changed.
        _state = "unknown (this torch's cache lookup could not be read)"
        return _state
    if FAULTY_GUARD not in source:
        _state = "this torch's own"
        return _state
    if HIT_STATE not in inspect.getsource(triton_heuristics.check_autotune_cache):
        # The faulty guard, around a cache lookup this fix does not know how to read.
        _state = f"not reused ({UPSTREAM_ISSUE}; this torch's cache lookup is not the one fixed)"
        logger.warning("Inductor: this torch re-tunes every kernel at warm starts (%s); "
                       "expect the tuning time on every run", UPSTREAM_ISSUE)
        return _state
    autotuner.recheck_autotune_cache = _recheck_keeping_tuned_config
    logger.info("Inductor: warm starts reuse coordinate-descent results from the kernel cache "
                "(this torch re-tunes every kernel instead: %s, fixed in torch 2.12)",
                UPSTREAM_ISSUE)
    _state = f"reused (the benchmark's fix for {UPSTREAM_ISSUE})"
    return _state


def tuned_configs_state() -> str | None:
    """How this process reuses coordinate-descent results; None when it does not tune."""
    return _state


def _recheck_keeping_tuned_config(self, reload_kernel_from_src) -> None:
    """`CachingAutotuner.recheck_autotune_cache` for a statically launchable kernel loaded from
    the FX-graph cache: where the autotune cache holds a winner, keep only that configuration
    and carry over whether coordinate descent found it, whatever the number compiled."""
    from torch._inductor.runtime import triton_heuristics

    compiled = [result.config for result in self.compile_results]
    found, _, info = triton_heuristics.check_autotune_cache(compiled, self.filename,
                                                             self.inductor_meta)
    self.autotune_cache_info = info
    # With one compiled configuration and no cache entry, `found` is that configuration back:
    # only a hit names a winner.
    if info.get("autotune_cache_state") != "hit":
        return
    (winner,) = found
    tuned = bool(getattr(winner, "found_by_coordesc", False))
    wanted = triton_heuristics.triton_config_to_hashable(winner)
    for result in self.compile_results:
        if triton_heuristics.triton_config_to_hashable(result.config) == wanted:
            # run() reads the mark from the launcher's config, which is this object.
            result.config.found_by_coordesc = tuned
            self.compile_results = [result]
            return
    if tuned:
        # Coordinate descent left the precompiled set: compile its winner here, once.
        if self.fn.fn is None:
            self.fn = reload_kernel_from_src().fn
        self.compile_results = [self._precompile_config(winner)]
