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

A second path loses the mark on every torch so far: a kernel the static launcher cannot take is
compiled in inductor's worker processes, which read the tuned winner from the cache and send the
kernel back pickled, and triton's `Config.__setstate__` (3.x) rebuilds the configuration from
its known fields only, dropping `found_by_coordesc` (pytorch/pytorch#181292). On an H100 (torch
2.11, 2026-12-05) a warm Wan FP8 start still ran 150 of the cold start's 286 coordinate-descent
benchmarks with only the first fix in place. `keep_tuned_mark_through_pickling` makes the
unpickled configuration keep the mark the worker sent.
"""

from __future__ import annotations

import inspect
import logging
import pickle

logger = logging.getLogger("mlenergy.diffusion")

# The 2.8-2.11 guard that skips the cache for single-configuration kernels, as the source reads.
FAULTY_GUARD = "len(cached_configs) == 1 and len(configs) > 1"
UPSTREAM_ISSUE = "pytorch/pytorch#172819"
PICKLE_ISSUE = "pytorch/pytorch#181292"
TUNED_MARK = "found_by_coordesc"
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
    _state = _fix_static_launch_recheck(triton_heuristics)
    if keep_tuned_mark_through_pickling():
        _state += f"; worker-compiled kernels: the benchmark's fix for {PICKLE_ISSUE}"
    return _state


def _fix_static_launch_recheck(triton_heuristics) -> str:
    """The statically launched kernels' cache lookup (pytorch/pytorch#172819)."""
    autotuner = triton_heuristics.CachingAutotuner
    try:
        source = inspect.getsource(autotuner.recheck_autotune_cache)
    except (AttributeError, OSError, TypeError):
        # No such method (another torch), or no source to read: whether this torch reuses
        # them is not known here, and nothing is changed.
        return "unknown (this torch's cache lookup could not be read)"
    if FAULTY_GUARD not in source:
        return "this torch's own"
    if HIT_STATE not in inspect.getsource(triton_heuristics.check_autotune_cache):
        # The faulty guard, around a cache lookup this fix does not know how to read.
        logger.warning("Inductor: this torch re-tunes every kernel at warm starts (%s); "
                       "expect the tuning time on every run", UPSTREAM_ISSUE)
        return f"not reused ({UPSTREAM_ISSUE}; this torch's cache lookup is not the one fixed)"
    autotuner.recheck_autotune_cache = _recheck_keeping_tuned_config
    logger.info("Inductor: warm starts reuse coordinate-descent results from the kernel cache "
                "(this torch re-tunes every kernel instead: %s, fixed in torch 2.12)",
                UPSTREAM_ISSUE)
    return f"reused (the benchmark's fix for {UPSTREAM_ISSUE})"


def keep_tuned_mark_through_pickling() -> bool:
    """Where unpickling a triton `Config` drops the coordinate-descent mark, make it keep the
    mark; True when this changed anything. The worker's side needs nothing: a `Config`'s pickled
    state is its `__dict__`, mark included."""
    try:
        from torch._inductor.runtime.triton_compat import Config
    except ImportError:
        return False
    if Config is None or _mark_survives_pickling(Config):
        return False
    rebuild = Config.__setstate__

    def setstate_keeping_tuned_mark(self, state):
        rebuild(self, state)
        if TUNED_MARK in state:
            setattr(self, TUNED_MARK, state[TUNED_MARK])

    Config.__setstate__ = setstate_keeping_tuned_mark
    return _mark_survives_pickling(Config)


def _mark_survives_pickling(config_class) -> bool:
    try:
        config = config_class({"XBLOCK": 1}, num_warps=1, num_stages=1)
    except TypeError:  # another triton's Config: leave it as it is
        return True
    setattr(config, TUNED_MARK, True)
    return getattr(pickle.loads(pickle.dumps(config)), TUNED_MARK, False) is True


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
    tuned = bool(getattr(winner, TUNED_MARK, False))
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
