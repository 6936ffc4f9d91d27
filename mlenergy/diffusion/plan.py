"""Turning a parsed configuration into a validated run plan, before anything heavy happens.

Every check here is cheap and runs on every rank before any model loads, so bad input ends the
run with one clear line and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from mlenergy.diffusion import prompts
from mlenergy.diffusion import resolve
from mlenergy.diffusion.config import (  # noqa: F401 - ConfigError is re-exported for callers
    DEFAULT_CACHE_THRESHOLD,
    BenchmarkConfig,
    ConfigError,
    TextToVideo,
)
from mlenergy.diffusion.registry import ModelSpec, known_model_ids


@dataclasses.dataclass(frozen=True)
class RunPlan:
    config: BenchmarkConfig
    spec: ModelSpec
    task: str
    weights: str
    batch_size: int
    height: int
    width: int
    inference_steps: int
    guidance_scale: float
    seed: int
    dtype: str
    max_sequence_length: int | None
    warmup_iters: int
    warmup_steps: int
    benchmark_iters: int
    ulysses_degree: int
    ring_degree: int
    world_size: int
    device_type: str
    run_dir: Path
    num_frames: int | None = None
    fps: int | None = None
    cache_threshold: float | None = None
    # The --reference_run's results.json, checked to be comparable.
    reference: dict | None = None

    @property
    def base_dir(self) -> Path:
        return self.run_dir.parent

    @property
    def num_gpus(self) -> int:
        return self.world_size if self.device_type == "cuda" else 0


def default_base_dir(task: str, model_id: str, root: Path = Path("run")) -> Path:
    """`root/diffusion/<task>/<org>/<model>`: the layout the ML.ENERGY toolkit globs."""
    return Path(root) / "diffusion" / task / resolve.record_id(model_id)


def _run_dir_name(plan_values: dict, spec: ModelSpec, config: BenchmarkConfig) -> str:
    """The ML.ENERGY directory name, plus `+key-value` only for settings off their defaults."""
    v = plan_values
    parts = [
        f"batch-{v['batch_size']}",
        f"size-{v['height']}x{v['width']}",
        f"steps-{v['inference_steps']}",
        f"seed-{v['seed']}",
        f"uly-{v['ulysses_degree']}",
        f"ring-{v['ring_degree']}",
        f"tc-{config.use_torch_compile}",
    ]
    if v["num_frames"] is not None and v["num_frames"] != spec.num_frames:
        parts.append(f"frames-{v['num_frames']}")
    if v["fps"] is not None and v["fps"] != spec.fps:
        parts.append(f"fps-{v['fps']}")
    if v["guidance_scale"] != spec.guidance_scale:
        parts.append(f"guidance-{v['guidance_scale']:g}")
    if v["weights"] != "pretrained":
        parts.append(f"weights-{v['weights']}")
    if v["dtype"] != spec.dtype:
        parts.append(f"dtype-{v['dtype']}")
    if config.compile_mode not in (None, "default"):
        parts.append(f"compilemode-{config.compile_mode}")
    if config.use_torch_compile and config.compile_backend != "inductor":
        parts.append(f"compilebackend-{config.compile_backend}")
    if config.compile_scope not in (None, "transformer"):
        parts.append(f"compilescope-{config.compile_scope}")
    if config.use_fp8_t5_encoder:
        parts.append("fp8t5-True")
    if config.use_teacache:
        parts.append("cache-teacache")
    if config.use_fbcache:
        parts.append("cache-fbcache")
    if config.cache_threshold is not None and config.cache_threshold != DEFAULT_CACHE_THRESHOLD:
        parts.append(f"cachethresh-{config.cache_threshold:g}")
    if config.enable_sequential_cpu_offload:
        parts.append("offload-True")
    if config.attention_backend is not None:
        parts.append(f"attn-{config.attention_backend}")
    parts += resolve.run_dir_tokens(spec)
    return "+".join(parts)


def _cache_threshold(config: BenchmarkConfig) -> float | None:
    if not (config.use_teacache or config.use_fbcache):
        return None
    return DEFAULT_CACHE_THRESHOLD if config.cache_threshold is None else config.cache_threshold


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def _check_parallelism(config: BenchmarkConfig, spec: ModelSpec, arch: dict, world_size: int,
                       device_type: str, visible_gpus: int) -> None:
    u, r = config.ulysses_degree, config.ring_degree
    _positive("--ulysses_degree", u)
    _positive("--ring_degree", r)
    if u * r != world_size:
        raise ConfigError(
            f"--ulysses_degree {u} x --ring_degree {r} = {u * r} but {world_size} process(es) "
            f"were started; launch with torchrun --nproc_per_node={u * r} (or change the degrees)"
        )
    family = spec.family
    if u * r > 1 and not family.supports_sequence_parallel:
        raise ConfigError(
            f"{spec.model_id} is a UNet ({family.name}) and xDiT gives it no sequence "
            "parallelism; run it with --ulysses_degree 1 --ring_degree 1 on one process"
        )
    if r > 1 and device_type != "cuda":
        raise ConfigError(
            f"--ring_degree {r} needs CUDA GPUs (ring attention has no CPU kernels); "
            "use --ulysses_degree on CPU"
        )
    if family.heads_key and u > 1:
        heads = arch[family.denoiser_slot][family.heads_key]
        if heads % u:
            raise ConfigError(
                f"{spec.model_id} has {heads} attention heads, not divisible by "
                f"--ulysses_degree {u}; pick a degree that divides {heads}"
            )
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if local > visible_gpus:
            raise ConfigError(
                f"{local} processes on this node but only {visible_gpus} visible GPU(s); "
                "lower --nproc_per_node or set CUDA_VISIBLE_DEVICES"
            )


def _check_options(config: BenchmarkConfig, spec: ModelSpec, device_type: str) -> None:
    # Imported here: options.py raises this module's ConfigError.
    from mlenergy.diffusion import options

    options.check(config, spec, device_type)


def _video_shape(workload: TextToVideo, spec: ModelSpec, arch: dict) -> tuple[int, int]:
    """Frames and fps of a video run; the frame count must be one the model can generate."""
    family = spec.family
    frames = workload.num_frames if workload.num_frames is not None else spec.num_frames
    fps = workload.fps if workload.fps is not None else spec.fps
    _positive("--workload.fps", fps)
    _positive("--workload.num_frames", frames)
    if family.fixed_frames_key is not None:
        fixed = arch[family.denoiser_slot][family.fixed_frames_key]
        if frames != fixed:
            raise ConfigError(
                f"{spec.model_id} generates exactly {fixed} frames (its temporal position "
                f"embedding has that length), not {frames}; use --workload.num_frames {fixed}"
            )
    t = family.temporal_factor
    if t > 1 and (frames - 1) % t:
        below = (frames - 1) // t * t + 1
        raise ConfigError(
            f"{spec.model_id} compresses time by {t}, so it can generate 1 + {t}k frames "
            f"(e.g. {', '.join(str(1 + t * k) for k in (4, 8, 12, 20))}), not {frames}; "
            f"use --workload.num_frames {below} or {below + t}"
        )
    return frames, fps


def make_plan(config: BenchmarkConfig, world_size: int | None = None,
              device_type: str | None = None, visible_gpus: int | None = None) -> RunPlan:
    """Resolve defaults and validate. The keyword arguments stand in for the launch
    environment (WORLD_SIZE, the visible devices), so a configuration can be checked for a
    machine other than this one."""
    workload = config.workload
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if visible_gpus is None:
        visible_gpus = torch.cuda.device_count() if device_type == "cuda" else 0

    spec = resolve.resolve_spec(workload)
    if spec.task != workload.task:
        other = "text-to-video" if workload.task == "text-to-image" else "text-to-image"
        sub = "workload:t2v" if other == "text-to-video" else "workload:t2i"
        raise ConfigError(
            f"{spec.model_id} is a {spec.task} model; use the {sub} subcommand, or choose a "
            f"{workload.task} model ({', '.join(known_model_ids(workload.task)) or 'none yet'})"
        )
    arch = spec.family.tiny if workload.weights == "tiny" else spec.architecture
    # What the model can generate first: it does not depend on how the run is launched.
    num_frames, fps = _video_shape(workload, spec, arch) if isinstance(workload, TextToVideo) \
        else (None, None)
    _check_parallelism(config, spec, arch, world_size, device_type, visible_gpus)
    _check_options(config, spec, device_type)

    _positive("--workload.batch_size", workload.batch_size)
    _positive("--workload.inference_steps", workload.inference_steps)
    _positive("--benchmark_iters", config.benchmark_iters)
    if not 0 <= config.idle_baseline_s <= 600:
        raise ConfigError(f"--idle_baseline_s must be between 0 and 600 seconds, got "
                          f"{config.idle_baseline_s}")
    warmup_iters = config.warmup_iters
    if warmup_iters is None:
        warmup_iters = 2 if config.use_torch_compile else 1
    if warmup_iters < 0:
        raise ConfigError(f"--warmup_iters must be 0 or more, got {warmup_iters}")
    height = workload.height if workload.height is not None else spec.height
    width = workload.width if workload.width is not None else spec.width
    factor = spec.family.spatial_factor
    for name, value in (("height", height), ("width", width)):
        if value < 1 or value % factor:
            raise ConfigError(
                f"--workload.{name} {value} must be a positive multiple of {factor} for "
                f"{spec.model_id} (VAE downsampling x patch size)"
            )
    steps = workload.inference_steps or spec.steps
    guidance = workload.guidance_scale if workload.guidance_scale is not None else spec.guidance_scale
    dtype = workload.dtype or (spec.dtype if device_type == "cuda" else "float32")
    if workload.prompts_file is not None:
        try:
            prompts.read_prompts_file(workload.prompts_file)
        except prompts.PromptsError as err:
            raise ConfigError(str(err)) from None
    if workload.weights == "pretrained":
        resolve.check_pretrained(spec)

    if num_frames is not None:
        default_iters = 2
    else:
        default_iters = 8 if steps <= 30 else 4
    benchmark_iters = config.benchmark_iters or default_iters
    _positive("--warmup_steps", config.warmup_steps)
    warmup_steps = config.warmup_steps or (1 if num_frames is not None else steps)
    max_seq = spec.family.tiny_max_sequence_length if workload.weights == "tiny" else spec.max_sequence_length
    values = dict(
        batch_size=workload.batch_size, height=height, width=width, inference_steps=steps,
        guidance_scale=guidance, seed=workload.seed, weights=workload.weights, dtype=dtype,
        ulysses_degree=config.ulysses_degree, ring_degree=config.ring_degree,
        num_frames=num_frames, fps=fps,
    )
    reference = None
    if config.reference_run is not None:
        from mlenergy.diffusion import quality

        if num_frames is not None:
            raise ConfigError("--reference_run compares images; it does not handle videos yet, "
                              "drop it for text-to-video")

        reference = quality.load_reference(
            config.reference_run, model_id=spec.model_id, seed=workload.seed, height=height,
            width=width, batch_size=workload.batch_size, inference_steps=steps,
            benchmark_iters=benchmark_iters, save_images=config.save_images)
    base_dir = workload.base_dir or default_base_dir(workload.task, spec.model_id)
    run_dir = Path(base_dir) / _run_dir_name(values, spec, config)
    return RunPlan(
        config=config, spec=spec, task=workload.task, max_sequence_length=max_seq,
        warmup_iters=warmup_iters, warmup_steps=warmup_steps,
        benchmark_iters=benchmark_iters,
        cache_threshold=_cache_threshold(config), reference=reference,
        world_size=world_size, device_type=device_type, run_dir=run_dir, **values,
    )
