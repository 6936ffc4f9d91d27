"""One line per run under a runs folder (scripts/gpu/issue24.sh): s and J per output, peak memory,
first warm-up iteration and its overhead, dynamo's compile count, coordinate-descent benchmarks,
inductor settings in force, attention kernel, quality against the reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def line(path: Path) -> str:
    d = json.loads(path.read_text())
    unit = "image" if "avg_time_per_image" in d else "video"
    c = d.get("compile") or {}
    cache = c.get("kernel_cache") or {}
    settings = c.get("inductor_settings") or {}
    q = d.get("quality") or {}
    fp8 = d.get("quantized_denoiser") or {}
    fields = {
        "run": path.parent.parent.name,
        f"s/{unit}": d.get(f"avg_time_per_{unit}"),
        f"J/{unit}": d.get(f"energy_per_{unit}"),
        "peak_GB": d.get("peak_memory_gb"),
        "iter_min_max": [(d.get("latency_per_iteration") or {}).get(k) for k in ("min", "max")],
        "first_warmup_s": c.get("first_warmup_iteration_s"),
        "first_call_overhead_s": c.get("first_call_overhead_s"),
        "dynamo_compile_s": c.get("compile_time_s"),
        "fx_hits/misses": (cache.get("fx_graph_cache_hits"), cache.get("fx_graph_cache_misses")),
        "coordesc_benchmarks": cache.get("coordinate_descent_benchmarks"),
        "coordesc": (settings.get("coordinate_descent_tuning"),
                     settings.get("coordinate_descent_check_all_directions")),
        "attention": (d.get("attention") or {}).get("used"),
        "fa3": ((d.get("attention") or {}).get("fa3") or {}).get("self_check_max_abs_difference"),
        "fp8_layers": fp8.get("fp8_linear_layers"),
        "psnr_db": q.get("mean_psnr_db"),
        "ssim": q.get("mean_ssim"),
        "gpu": d.get("gpu_model"),
    }
    return json.dumps(fields, default=str)


def main(root: str) -> None:
    for path in sorted(Path(root).glob("*/*/results.json")):
        try:
            print(line(path))
        except (OSError, ValueError) as err:
            print(f"{path}: {err}")


if __name__ == "__main__":
    main(sys.argv[1])
