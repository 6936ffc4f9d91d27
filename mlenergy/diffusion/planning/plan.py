"""Turning a parsed configuration into a validated run plan, before anything heavy happens.

Every check here is cheap and runs on every rank before any model loads, so bad input ends the
run with one clear line and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlenergy.diffusion.inputs.config import BenchmarkConfig, ConfigError, TextToVideo
from mlenergy.diffusion.inputs.task import Task, task_named
from mlenergy.diffusion.models import resolve
from mlenergy.diffusion.models.registry import ModelSpec, is_tiny, known_model_ids
from mlenergy.diffusion.planning import limits, options as run_options, prompts
from mlenergy.diffusion.planning.options import Options
from mlenergy.diffusion.planning.run_plan import PromptSource, RunPlan
from mlenergy.diffusion.process.launch import Launch

__all__ = ["ConfigError", "Launch", "RunPlan", "make_plan", "default_base_dir"]


def default_base_dir(task: str, model_id: str, root: Path = Path("run")) -> Path:
    """`root/diffusion/<task>/<org>/<model>`: the layout the ML.ENERGY toolkit globs."""
    return Path(root) / "diffusion" / task / resolve.record_id(model_id)


def _run_dir_name(v: dict, spec: ModelSpec, options: Options) -> str:
    """The ML.ENERGY directory name, plus `+key-value` only for settings off their defaults."""
    parts = [
        f"batch-{v['batch_size']}",
        f"size-{v['height']}x{v['width']}",
        f"steps-{v['inference_steps']}",
        f"seed-{v['seed']}",
        f"uly-{v['ulysses_degree']}",
        f"ring-{v['ring_degree']}",
        f"tc-{options.use_torch_compile}",
    ]
    defaults = {"num_frames": ("frames", spec.num_frames), "fps": ("fps", spec.fps),
                "guidance_scale": ("guidance", spec.guidance_scale),
                "weights": ("weights", "pretrained"), "dtype": ("dtype", spec.dtype)}
    for key, (token, default) in defaults.items():
        if v[key] is not None and v[key] != default:
            parts.append(f"{token}-{run_options.format_value(v[key])}")
    # Options come after the shape, in their own order.
    parts += options.dir_tokens()
    parts += resolve.run_dir_tokens(spec)
    return "+".join(parts)


def _given_or(given, default):
    """The user's value, else the model's (0 is a value given, unlike None)."""
    return default if given is None else given


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def _check_parallelism(config: BenchmarkConfig, spec: ModelSpec, arch: dict,
                       launch: Launch) -> None:
    world_size, device_type = launch.world_size, launch.device_type
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
    if device_type == "cuda" and launch.local_world_size > launch.visible_gpus:
        raise ConfigError(
            f"{launch.local_world_size} processes on this node but only {launch.visible_gpus} "
            "visible GPU(s); lower --nproc_per_node or set CUDA_VISIBLE_DEVICES"
        )


def _check_row_split(spec: ModelSpec, arch: dict, height: int, degree: int) -> None:
    """xDiT's pipeline classes split the latent rows among the sequence-parallel ranks, and
    refuse (on every rank, once loaded) a count the degree does not divide."""
    family = spec.family
    patch = arch[family.denoiser_slot].get("patch_size")
    if degree < 2 or family.xfuser_pipeline is None or not isinstance(patch, int):
        return
    # The VAE's factor, whose latents the denoiser groups patch x patch into tokens (FLUX packs
    # 2x2 latents into a token of patch 1: xDiT counts its rows in tokens).
    factor = family.spatial_factor // patch
    if (height // factor) % degree:
        raise ConfigError(
            f"--workload.height {height} gives {height // factor} latent rows ({factor} pixels "
            f"each), which xDiT cannot split among {degree} sequence-parallel ranks; use a "
            f"height that is a multiple of {factor * degree}, or a smaller degree")


def _video_shape(workload: TextToVideo, spec: ModelSpec, arch: dict) -> tuple[int, int]:
    """Frames and fps of a video run; the frame count must be one the model can generate."""
    family = spec.family
    frames = _given_or(workload.num_frames, spec.num_frames)
    fps = _given_or(workload.fps, spec.fps)
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


def make_plan(config: BenchmarkConfig, launch: Launch | None = None) -> RunPlan:
    """Resolve every default and validate, before anything loads. `launch` holds the launch's
    facts (process counts, devices); by default this process's, so a configuration can also be
    checked for another machine."""
    launch = launch or Launch.from_environment()
    workload, task = config.workload, config.workload.task
    spec = resolve.resolve_spec(workload)
    _check_task(spec, task)
    arch = spec.component_configs(workload.weights)
    # What the model can generate first: it does not depend on how the run is launched.
    num_frames, fps = _video_shape(workload, spec, arch) if task.is_video else (None, None)
    _check_parallelism(config, spec, arch, launch)
    shape = _shape(config, spec, launch)
    _check_row_split(spec, arch, shape["height"], config.ulysses_degree * config.ring_degree)
    options = run_options.resolve(config, spec, launch, shape["dtype"])
    counts = _iteration_counts(config, task, shape["inference_steps"])
    _check_inputs(config, spec, launch)
    values = dict(shape, seed=workload.seed, weights=workload.weights,
                  ulysses_degree=config.ulysses_degree, ring_degree=config.ring_degree,
                  num_frames=num_frames, fps=fps)
    reference = _reference(config, spec, shape, counts["benchmark_iters"], num_frames)
    base_dir = workload.base_dir or default_base_dir(task.name, spec.model_id)
    limits.finite_numbers(config)
    plan = RunPlan(
        spec=spec, task=task, architecture=arch, tiny_model=is_tiny(workload.weights),
        max_sequence_length=spec.sequence_length(workload.weights), options=options,
        reference_run=config.reference_run, reference=reference, launch=launch,
        run_dir=Path(base_dir) / _run_dir_name(values, spec, options),
        prompts=PromptSource(workload.prompts_file, workload.prompt_dataset,
                             workload.prompt_cache_dir, workload.prompt_sampling),
        save_images=config.save_images, overwrite_results=config.overwrite_results,
        idle_baseline_s=config.idle_baseline_s,
        require_exclusive_gpus=config.require_exclusive_gpus, count_flops=config.count_flops,
        profile_steps=_profile_steps(config, launch), flags_given=flags_given(config),
        **counts, **values,
    )
    limits.check(plan)
    return plan


def _profile_steps(config: BenchmarkConfig, launch: Launch) -> int:
    steps = config.profile_steps
    if steps == 0:
        return 0
    if steps < 2:
        raise ConfigError(f"--profile_steps must be 0 (no profile) or at least 2 (the first "
                          f"profiled step is left out), got {steps}")
    if launch.device_type != "cuda":
        raise ConfigError("--profile_steps profiles GPU kernels and this run has no GPU: drop it")
    return steps


def flags_given(config: BenchmarkConfig) -> tuple[tuple[str, object], ...]:
    """Every flag as the command line gave it (None: left to the plan), workload's first."""
    workload = config.workload
    return tuple([(f"--workload.{f.name}", getattr(workload, f.name))
                  for f in dataclasses.fields(workload)]
                 + [(f"--{f.name}", getattr(config, f.name))
                    for f in dataclasses.fields(config) if f.name != "workload"])


def _check_task(spec: ModelSpec, task: Task) -> None:
    if spec.task != task.name:
        sub = task_named(spec.task).subcommand
        raise ConfigError(
            f"{spec.model_id} is a {spec.task} model; use the {sub} subcommand, or choose a "
            f"{task.name} model ({', '.join(known_model_ids(task.name)) or 'none yet'})"
        )


def _shape(config: BenchmarkConfig, spec: ModelSpec, launch: Launch) -> dict:
    """Size, steps, guidance and dtype: the user's, else the model's."""
    workload = config.workload
    _positive("--workload.batch_size", workload.batch_size)
    _positive("--workload.inference_steps", workload.inference_steps)
    height = _given_or(workload.height, spec.height)
    width = _given_or(workload.width, spec.width)
    factor = spec.family.spatial_factor
    for name, value in (("height", height), ("width", width)):
        if value < 1 or value % factor:
            raise ConfigError(
                f"--workload.{name} {value} must be a positive multiple of {factor} for "
                f"{spec.model_id} (VAE downsampling x patch size)"
            )
    guidance = _given_or(workload.guidance_scale, spec.guidance_scale)
    dtype = workload.dtype or (spec.dtype if launch.device_type == "cuda" else "float32")
    return dict(batch_size=workload.batch_size, height=height, width=width,
                inference_steps=workload.inference_steps or spec.steps,
                guidance_scale=guidance, dtype=dtype)


def _check_inputs(config: BenchmarkConfig, spec: ModelSpec, launch: Launch) -> None:
    """Inputs read before loading: the prompts file, the pretrained weights, the idle window."""
    workload = config.workload
    if not 0 <= config.idle_baseline_s <= 600:
        raise ConfigError(f"--idle_baseline_s must be between 0 and 600 seconds, got "
                          f"{config.idle_baseline_s}")
    if workload.prompts_file is not None:
        try:
            prompts.read_prompts_file(workload.prompts_file)
        except prompts.PromptsError as err:
            raise ConfigError(str(err)) from None
    if workload.weights == "pretrained":
        resolve.check_pretrained(spec, launch.hub_offline, here=launch.here)


def _iteration_counts(config: BenchmarkConfig, task: Task, steps: int) -> dict:
    """Warm-up and measured iterations: the user's, else the task's defaults."""
    _positive("--benchmark_iters", config.benchmark_iters)
    _positive("--warmup_steps", config.warmup_steps)
    warmup_iters = config.warmup_iters
    if warmup_iters is None:
        warmup_iters = run_options.default_warmup_iters(config)
    if warmup_iters < 0:
        raise ConfigError(f"--warmup_iters must be 0 or more, got {warmup_iters}")
    return dict(warmup_iters=warmup_iters,
                warmup_steps=config.warmup_steps or task.default_warmup_steps(steps),
                benchmark_iters=config.benchmark_iters or task.default_benchmark_iters(steps))


def _reference(config: BenchmarkConfig, spec: ModelSpec, shape: dict, benchmark_iters: int,
               num_frames: int | None) -> dict | None:
    """The --reference_run's results.json, checked to be comparable with this run."""
    if config.reference_run is None:
        return None
    from mlenergy.diffusion.results import quality

    return quality.load_reference(
        config.reference_run, model_id=spec.model_id, seed=config.workload.seed,
        height=shape["height"], width=shape["width"], batch_size=shape["batch_size"],
        inference_steps=shape["inference_steps"], benchmark_iters=benchmark_iters,
        save_images=config.save_images, num_frames=num_frames)
