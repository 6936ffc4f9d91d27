"""What a run leaves behind: results.json (the ML.ENERGY format and more), requests.json,
model_info.json, and the summary table."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from mlenergy.diffusion import resolve, stats
from mlenergy.diffusion.measurement import Measurement
from mlenergy.diffusion.plan import RunPlan

from mlenergy.diffusion.files import REQUESTS, RESULTS  # noqa: F401 - results.RESULTS for callers
MODEL_INFO = "model_info.json"
DRIVER_LOG = "driver_log.txt"
IMAGE_DIR = "image_outputs"
VIDEO_DIR = "video_outputs"


@dataclass
class IterationRecord:
    index: int
    measurement: Measurement
    prompts: list[str]
    images: list[str] = field(default_factory=list)
    # Wall-clock start and end of the iteration's window; its stage record (stages.py).
    window: tuple[float, float] | None = None
    stages: dict | None = None


def output_name(iteration: int, index: int, prompt: str, suffix: str = "png") -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-").lower()[:60] or "prompt"
    return f"i{iteration}-{index}_{slug}.{suffix}"


def requests_document(plan: RunPlan, warmup: list[list[str]], measured: list[list[str]]) -> list:
    docs = [{"batch_size": len(b), "prompts": b, "warmup": True} for b in warmup]
    docs += [{"batch_size": len(b), "prompts": b, "warmup": False} for b in measured]
    return docs


def model_info(plan: RunPlan, denoiser_parameters: int) -> dict:
    return {
        "model_id": plan.spec.model_id,
        "nickname": plan.spec.nickname,
        "total_parameters_billion": round(denoiser_parameters / 1e9, 3),
        "weight_precision": plan.dtype,
        "weights": plan.weights,
    }


def _stats(values: list[float]) -> dict:
    return stats.summarize(values)


def configurations(plan: RunPlan) -> dict:
    c = plan.config
    return {
        "ulysses_degree": c.ulysses_degree,
        "ring_degree": c.ring_degree,
        "use_torch_compile": c.use_torch_compile,
        "compile_mode": (c.compile_mode or "default") if c.use_torch_compile else None,
        "compile_backend": c.compile_backend if c.use_torch_compile else None,
        "compile_scope": (c.compile_scope or "transformer") if c.use_torch_compile else None,
        "use_fp8_t5_encoder": c.use_fp8_t5_encoder,
        "enable_sequential_cpu_offload": c.enable_sequential_cpu_offload,
        "use_teacache": c.use_teacache,
        "use_fbcache": c.use_fbcache,
        "cache_threshold": plan.cache_threshold,
        "attention_backend": c.attention_backend,
        "reference_run": str(c.reference_run) if c.reference_run is not None else None,
        "warmup_iters": plan.warmup_iters,
        "warmup_steps": plan.warmup_steps,
        "benchmark_iters": plan.benchmark_iters,
    }


def results_document(
    plan: RunPlan,
    *,
    started: datetime,
    iterations: list[IterationRecord],
    whole_run: Measurement,
    environment: dict,
    gpu_model: str,
    prompt_source: str,
    peak_memory_gb: list[float | None],
    parameter_memory_gb: float,
    load_time_s: float,
    warmup_time_s: float,
    benchmark_window: tuple[float, float],
    timeline: dict | None = None,
    measurement_sections: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """results.json: the keys the ML.ENERGY benchmark 3.0.0 writes, in its order, then ours.

    Headline numbers come from the per-iteration windows. `iteration_energy_measurements` exists
    only when every iteration's energy was measured, because readers take 0 or NaN at face value.
    `timeline` is the power/temperature block (GPU runs); without it only the window's bounds are
    written. `measurement_sections` (stage split, statistics, floor, checks) follow the
    iterations.
    """
    times = [r.measurement.time for r in iterations]
    energies = [r.measurement.total_gpu_energy for r in iterations]
    measured = all(e is not None for e in energies)
    total_images = plan.batch_size * len(iterations)
    total_time = sum(times)
    total_energy = sum(energies) if measured else None
    doc: dict = {
        "date": started.strftime("%Y%m%d-%H%M%S"),
        "model_id": plan.spec.model_id,
        "batch_size": plan.batch_size,
        "num_iterations": len(iterations),
        "height": plan.height,
        "width": plan.width,
        "inference_steps": plan.inference_steps,
        "seed": plan.seed,
    }
    if plan.task == "text-to-video":
        doc["num_frames"] = plan.num_frames
        doc["fps"] = plan.fps
    doc.update({
        "total_images": total_images,
        "total_time": total_time,
        "throughput_images_per_sec": total_images / total_time,
        "avg_time_per_image": total_time / total_images,
        "total_energy": total_energy,
        "energy_per_image": total_energy / total_images if measured else None,
    })
    if plan.task == "text-to-video":
        # A video is one output: the same numbers as the image keys, under names that say so.
        doc.update({
            "total_videos": total_images,
            "throughput_videos_per_sec": total_images / total_time,
            "avg_time_per_video": total_time / total_images,
            "energy_per_video": total_energy / total_images if measured else None,
        })
    doc["energy_measurement"] = whole_run.to_dict()
    if measured:
        doc["iteration_energy_measurements"] = [r.measurement.to_dict() for r in iterations]
    doc["configurations"] = configurations(plan)
    doc["timeline"] = timeline or {"benchmark_start_time": benchmark_window[0],
                                   "benchmark_end_time": benchmark_window[1]}

    doc.update({
        "task": plan.task,
        "energy_measured": measured,
        "ulysses_degree": plan.ulysses_degree,
        "ring_degree": plan.ring_degree,
        "num_processes": plan.world_size,
        "num_gpus": plan.num_gpus,
        "gpu_model": gpu_model,
        "guidance_scale": plan.guidance_scale,
        "weights": plan.weights,
        "dtype": plan.dtype,
        "max_sequence_length": plan.max_sequence_length,
        "prompt_source": prompt_source,
        **resolve.results_fields(plan.spec, plan.config.workload),
        "average_power_watts": total_energy / total_time if measured else None,
        "latency_per_iteration": _stats(times),
        "energy_per_iteration": _stats(energies) if measured else None,
        "iterations": [
            {
                "index": r.index,
                "time": r.measurement.time,
                "energy": r.measurement.total_gpu_energy,
                "gpu_energy": r.measurement.gpu_energy,
                "prompts": r.prompts,
                ("videos" if plan.task == "text-to-video" else "images"): r.images,
                **({"start_time": r.window[0], "end_time": r.window[1]} if r.window else {}),
                **({"stages": r.stages["stages"], "steps": r.stages["steps"],
                    "denoiser_forwards": r.stages["denoiser_forwards"],
                    "stage_boundaries": r.stages["boundaries"],
                    "stage_rank_window": r.stages["window"]} if r.stages else {}),
            }
            for r in iterations
        ],
        **(measurement_sections or {}),
        "peak_memory_gb": max((p for p in peak_memory_gb if p is not None), default=None),
        "peak_memory_gb_per_rank": peak_memory_gb,
        "parameter_memory_gb": parameter_memory_gb,
        "model_load_time_s": load_time_s,
        "warmup_time_s": warmup_time_s,
        "environment": environment,
    })
    doc.update(extra or {})
    return doc


def summary_table(doc: dict) -> str:
    def fmt(value, spec, unit=""):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "not measured"
        return f"{value:{spec}}{unit}"

    unit = "video" if doc.get("task") == "text-to-video" else "image"
    frames = f", {doc['num_frames']} frames at {doc['fps']} fps" if unit == "video" else ""
    rows = [
        ("model", doc["model_id"] + f" ({doc['weights']} weights, {doc['dtype']})"),
        ("device", (f"{doc['gpu_model']} x{doc['num_gpus']}" if doc["num_gpus"]
                    else f"CPU ({doc['gpu_model']}), {doc['num_processes']} process(es)")
         + f", ulysses {doc['ulysses_degree']} x ring {doc['ring_degree']}"),
        ("shape", f"batch {doc['batch_size']}, {doc['height']}x{doc['width']}, "
                  f"{doc['inference_steps']} steps{frames}"),
        ("iterations", f"{doc['num_iterations']} measured"),
        ("latency / batch", fmt(doc["latency_per_iteration"]["mean"], ".3f", " s")
         + f"  (median {doc['latency_per_iteration']['median']:.3f} s)"),
        (f"time / {unit}", fmt(doc["avg_time_per_image"], ".3f", " s")),
        (f"{unit}s / s", fmt(doc["throughput_images_per_sec"], ".3f")),
        (f"energy / {unit}", fmt(doc["energy_per_image"], ",.1f", " J")),
        ("average power", fmt(doc["average_power_watts"], ",.1f", " W")),
        ("peak memory", fmt(doc["peak_memory_gb"], ".2f", " GB")),
    ]
    if doc.get("compile"):
        c = doc["compile"]
        rows.append(("compile", f"{fmt(c['compile_time_s'], '.1f', ' s')} compiling"
                     + (", RECOMPILED while measuring" if c["recompiled_during_measurement"]
                        else "")))
    if doc.get("quality"):
        from mlenergy.diffusion.quality import summary_text

        rows.append(("vs reference", summary_text(doc["quality"])))
    rows += _measurement_rows(doc, fmt, unit)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _measurement_rows(doc: dict, fmt, unit: str) -> list[tuple[str, str]]:
    rows = []
    latency = doc.get("latency_per_image_stats")
    if latency:
        ci = latency["ci95"]
        rows.append((f"time / {unit} p90", fmt(latency["p90"], ".3f", " s")
                     + (f"  (95% CI of mean {ci[0]:.3f}-{ci[1]:.3f} s)" if ci else "")))
    steadiness = doc.get("steadiness")
    if steadiness and steadiness["latency_cv"] is not None:
        energy_cv = steadiness["energy_cv"]
        rows.append(("variation (CV)", f"latency {100 * steadiness['latency_cv']:.1f}%"
                     + (f", energy {100 * energy_cv:.1f}%" if energy_cv is not None else "")
                     + ("" if steadiness["steady"] else "  NOT STEADY")))
    breakdown = doc.get("stage_breakdown")
    if breakdown:
        rows.append(("stages / batch", "time (share), energy"))
        total = sum(v["time_s"] for v in breakdown.values()) or 1.0
        for stage, v in breakdown.items():
            energy = "" if v["energy_j"] is None else f", {v['energy_j']:,.1f} J"
            rows.append((f"  {stage.replace('_', ' ')}",
                         f"{v['time_s']:.3f} s ({100 * v['time_s'] / total:.1f}%){energy}"))
    steps = doc.get("steps")
    if steps:
        rows.append(("step latency", f"mean {steps['mean'] * 1e3:.1f} ms, median "
                     f"{steps['median'] * 1e3:.1f} ms, p90 {steps['p90'] * 1e3:.1f} ms"))
    floor = doc.get("physical_floor")
    if floor:
        rows.append(("TFLOP / forward", f"{floor['flops_per_forward'] / 1e12:.4g}"
                     + (f"  (analytic {floor['analytic_flops_per_forward'] / 1e12:.4g})"
                        if floor["analytic_flops_per_forward"] else "")))
        rows.append(("achieved", fmt(floor["achieved_tflops"], ".4g", " TFLOP/s")
                     + (f", MFU {100 * floor['mfu']:.1f}%" if floor["mfu"] is not None else "")))
        rows.append(("floor ratio", "denoising time / floor "
                     + fmt(floor["denoising_time_over_floor"], ".2f", "x")
                     + "; energy floor " + fmt(floor["energy_floor_j"], ",.1f", " J")))
    idle = doc.get("idle_baseline")
    if idle and idle["total_power_w"] is not None:
        rows.append(("idle power", f"{idle['total_power_w']:,.1f} W"))
    check = (doc.get("energy_cross_check") or {})
    if check.get("timeline"):
        rows.append(("self-check", f"timeline vs counter {100 * check['timeline']['relative_difference']:+.2f}%"))
    if check.get("nvml") and check["nvml"]["relative_difference"] is not None:
        rows.append(("NVML check", f"direct read vs Zeus {100 * check['nvml']['relative_difference']:+.2f}%"))
    exclusive = doc.get("gpu_exclusivity")
    if exclusive and not exclusive["exclusive"]:
        rows.append(("GPU sharing", f"other processes: {exclusive['foreign_pids']}"))
    return rows
