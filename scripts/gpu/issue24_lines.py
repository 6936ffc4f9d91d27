"""One line per run under a runs folder (scripts/gpu/issue24.sh, issue24_levers.sh): s and J per output, peak memory,
first warm-up iteration and its overhead, dynamo's compile count, coordinate-descent benchmarks,
inductor settings in force, attention kernel, quality against the reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlenergy.diffusion.results.results_reader import RunResults  # noqa: E402


def line(path: Path) -> str:
    stored = RunResults.load(path)
    unit = stored.unit
    c = stored.section("compile")
    cache = c.get("kernel_cache") or {}
    settings = c.get("inductor_settings") or {}
    q = stored.section("quality")
    fp8 = stored.section("quantized_denoiser")
    attention = stored.section("attention")
    latency = stored.latency_per_iteration
    fused = stored.section("fused_qkv")
    profile = stored.section("profile")
    rank0 = (profile.get("ranks") or [{}])[0]
    per_step = rank0.get("per_step") or {}
    fields = {
        "run": path.parent.parent.name,
        f"s/{unit}": stored.time_per_output,
        f"J/{unit}": stored.energy_per_output,
        "peak_GB": stored.peak_memory_gb,
        "iter_min_max": [latency.min, latency.max] if latency else [None, None],
        "first_warmup_s": c.get("first_warmup_iteration_s"),
        "first_call_overhead_s": c.get("first_call_overhead_s"),
        "dynamo_compile_s": c.get("compile_time_s"),
        "fx_hits/misses": (cache.get("fx_graph_cache_hits"), cache.get("fx_graph_cache_misses")),
        "coordesc_benchmarks": cache.get("coordinate_descent_benchmarks"),
        "tuned_configs": cache.get("tuned_configs"),
        "coordesc": (settings.get("coordinate_descent_tuning"),
                     settings.get("coordinate_descent_check_all_directions")),
        "attention": attention.get("used"),
        "fa3": (attention.get("fa3") or {}).get("self_check_max_abs_difference"),
        "fp8_layers": fp8.get("fp8_linear_layers"),
        "fused_qkv": fused.get("fused_attention_layers"),
        "profile_step_ms": per_step.get("wall_s") and round(per_step["wall_s"] * 1e3, 2),
        "profile_ms_by_class": {k: round(v["ms_per_step"], 2)
                                for k, v in (rank0.get("by_class") or {}).items()},
        "profile_idle_ms": per_step.get("idle_s") is not None and round(per_step["idle_s"] * 1e3, 2),
        "profile_J_step": rank0.get("energy_per_step_j"),
        "profile_power": {k: v.get("mean_w") for k, v in (rank0.get("power_by_activity") or {}).items()},
        # Every rank: ms per step idle and in exposed communication, J per step, J of it waiting.
        "profile_waiting_by_rank": [
            (r["rank"], round(r["per_step"]["idle_s"] * 1e3, 2),
             round(r["per_step"]["exposed_communication_s"] * 1e3, 2),
             r.get("energy_per_step_j"), r.get("waiting_energy_j"))
            for r in profile.get("ranks") or []],
        # Every rank inside the measured windows: s and J of denoising waiting per iteration,
        # and how far the profiler stretched the step.
        "measured_waiting_by_rank": [
            (m["rank"], round(m["waiting_s"], 4), m["waiting_energy_j"],
             round(m["profiled_over_measured_step"], 3))
            for m in profile.get("measured_windows") or []],
        "psnr_db": q.get("mean_psnr_db"),
        "ssim": q.get("mean_ssim"),
        "gpu": stored.gpu_model,
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
