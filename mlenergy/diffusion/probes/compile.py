"""What torch.compile did: graphs compiled and seconds spent, and the kernel cache's hits."""

from __future__ import annotations

from dataclasses import dataclass

from mlenergy.diffusion.process import torch_compat
from mlenergy.diffusion.results.sections import Section


@dataclass
class CompileReport(Section):
    """results.json `compile` (with --use_torch_compile): what compiling cost and whether the
    measured iterations were free of it."""

    backend: str
    mode: str | None
    scope: str | None
    autotune: bool
    compiled: str | None
    # Dynamo's own count: tracing and code generation, not kernel tuning at run time.
    compile_time_s: float | None
    first_warmup_iteration_s: float | None
    steady_warmup_iteration_s: float | None
    first_call_overhead_s: float | None
    first_warmup_minus_fastest_measured_s: float | None
    graphs_compiled_per_warmup_iteration: list[int | None]
    graphs_compiled_during_measurement: int | None
    compile_seconds_during_measurement: float | None
    recompiled_during_measurement: bool | None
    # kernel_cache_report(), and the inductor settings in force (inductor backend only).
    kernel_cache: dict[str, int | str] | None
    inductor_settings: dict[str, object] | None


class CompileTracker:
    """Counts graphs dynamo compiles and the seconds it spends, between snapshots.

    These are torch._dynamo's own counters; reading them costs nothing and works whatever the
    backend. If this torch lacks them, the numbers are None.
    """

    def snapshot(self) -> tuple[int | None, float | None]:
        try:
            from torch._dynamo.utils import compilation_time_metrics, counters
        except ImportError:
            return None, None
        graphs = counters["stats"]["unique_graphs"]
        seconds = sum(compilation_time_metrics.get("_compile.compile_inner", []))
        return int(graphs), float(seconds)

    @staticmethod
    def difference(before, after) -> tuple[int | None, float | None]:
        graphs = None if None in (before[0], after[0]) else after[0] - before[0]
        seconds = None if None in (before[1], after[1]) else after[1] - before[1]
        return graphs, seconds


def kernel_cache_report() -> dict | None:
    """Where inductor keeps compiled kernels, and how often this process found them there.

    Inductor's FX-graph and AOTAutograd caches live on disk (TORCHINDUCTOR_CACHE_DIR), so a run
    that compiles the shapes an earlier run compiled loads them instead: hits here mean compile
    time was saved, which `compile_time_s` then shows.
    """
    try:
        from torch._dynamo.utils import counters
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    return {
        "dir": cache_dir(),
        "fx_graph_cache_hits": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fx_graph_cache_misses": int(counters["inductor"]["fxgraph_cache_miss"]),
        "aot_autograd_cache_hits": int(counters["aot_autograd"]["autograd_cache_hit"]),
        "aot_autograd_cache_misses": int(counters["aot_autograd"]["autograd_cache_miss"]),
        # Kernel configurations benchmarked at run time by coordinate-descent tuning (0 unless
        # it is on and the tuned configurations were not found in the cache).
        "coordinate_descent_benchmarks": int(counters["inductor"]["coordesc_tuning_bench"]),
        # Whether a warm cache's tuned configurations are reused (process/torch_compat.py);
        # None without coordinate-descent tuning.
        "tuned_configs": torch_compat.tuned_configs_state(),
    }
