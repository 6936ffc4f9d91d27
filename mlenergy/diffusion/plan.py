"""Turning a parsed configuration into a validated run plan, before anything heavy happens.

Every check here is cheap and runs on every rank before any model loads, so bad input ends the
run with one clear line and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlenergy.diffusion import limits, prompts, resolve
from mlenergy.diffusion import options as run_options
from mlenergy.diffusion.config import BenchmarkConfig, ConfigError, TextToVideo
from mlenergy.diffusion.launch import Launch
from mlenergy.diffusion.options import Options
from mlenergy.diffusion.registry import ModelSpec, known_model_ids
from mlenergy.diffusion.task import Task

__all__ = ["ConfigError", "Launch", "RunPlan", "make_plan", "default_base_dir"]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    config: BenchmarkConfig
    spec: ModelSpec
    task: Task
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
    launch: Launch
    options: Options
    run_dir: Path
    num_frames: int | None = None
    fps: int | None = None
    # The --reference_run's results.json, checked to be comparable.
    reference: dict | None = None

    @property
    def base_dir(self) -> Path:
        return self.run_dir.parent

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def device_type(self) -> str:
        return self.launch.device_type

    @property
    def num_gpus(self) -> int:
        return self.world_size if self.device_type == "cuda" else 0


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


def make_plan(config: BenchmarkConfig, launch: Launch | None = None) -> RunPlan:
    """Resolve every default and validate, before anything loads. `launch` holds the launch's
    facts (process counts, devices); by default this process's, so a configuration can also be
    checked for another machine."""
    launch = launch or Launch.from_environment()
    workload = config.workload
    spec = resolve.resolve_spec(workload)
    _check_task(spec, workload.task)
    arch = spec.family.tiny if workload.weights == "tiny" else spec.architecture
    # What the model can generate first: it does not depend on how the run is launched.
    num_frames, fps = _video_shape(workload, spec, arch) if isinstance(workload, TextToVideo) \
        else (None, None)
    _check_parallelism(config, spec, arch, launch)
    shape = _shape(config, spec, launch)
    options = run_options.resolve(config, spec, launch, shape["dtype"])
    counts = _iteration_counts(config, shape["inference_steps"], video=num_frames is not None)
    _check_inputs(config, spec, launch)
    values = dict(shape, seed=workload.seed, weights=workload.weights,
                  ulysses_degree=config.ulysses_degree, ring_degree=config.ring_degree,
                  num_frames=num_frames, fps=fps)
    reference = _reference(config, spec, shape, counts["benchmark_iters"], num_frames)
    base_dir = workload.base_dir or default_base_dir(workload.task.name, spec.model_id)
    max_seq = (spec.family.tiny_max_sequence_length if workload.weights == "tiny"
               else spec.max_sequence_length)
    plan = RunPlan(
        config=config, spec=spec, task=workload.task, max_sequence_length=max_seq,
        options=options, reference=reference, launch=launch,
        run_dir=Path(base_dir) / _run_dir_name(values, spec, options), **counts, **values,
    )
    limits.check(plan)
    return plan


def _check_task(spec: ModelSpec, task: Task) -> None:
    if spec.task != task.name:
        sub = "workload:t2v" if task.name == "text-to-image" else "workload:t2i"
        raise ConfigError(
            f"{spec.model_id} is a {spec.task} model; use the {sub} subcommand, or choose a "
            f"{task.name} model ({', '.join(known_model_ids(task.name)) or 'none yet'})"
        )


def _shape(config: BenchmarkConfig, spec: ModelSpec, launch: Launch) -> dict:
    """Size, steps, guidance and dtype: the user's, else the model's."""
    workload = config.workload
    _positive("--workload.batch_size", workload.batch_size)
    _positive("--workload.inference_steps", workload.inference_steps)
    height = workload.height if workload.height is not None else spec.height
    width = workload.width if workload.width is not None else spec.width
    factor = spec.family.spatial_factor
    for name, value in (("height", height), ("width", width)):
        if value < 1 or value % factor:
            raise ConfigError(
                f"--workload.{name} {value} must be a positive multiple of {factor} for "
                f"{spec.model_id} (VAE downsampling x patch size)"
            )
    guidance = workload.guidance_scale if workload.guidance_scale is not None \
        else spec.guidance_scale
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


def _iteration_counts(config: BenchmarkConfig, steps: int, video: bool) -> dict:
    """Warm-up and measured iterations. Measured: 8 when steps <= 30, else 4 (images); 2
    (videos), as the ML.ENERGY benchmark did. Warm-up steps: all of them (images), 1 (videos:
    one step already runs every measured shape)."""
    _positive("--benchmark_iters", config.benchmark_iters)
    _positive("--warmup_steps", config.warmup_steps)
    warmup_iters = config.warmup_iters
    if warmup_iters is None:
        warmup_iters = run_options.default_warmup_iters(config)
    if warmup_iters < 0:
        raise ConfigError(f"--warmup_iters must be 0 or more, got {warmup_iters}")
    default_iters = 2 if video else (8 if steps <= 30 else 4)
    return dict(warmup_iters=warmup_iters,
                warmup_steps=config.warmup_steps or (1 if video else steps),
                benchmark_iters=config.benchmark_iters or default_iters)


def _reference(config: BenchmarkConfig, spec: ModelSpec, shape: dict, benchmark_iters: int,
               num_frames: int | None) -> dict | None:
    """The --reference_run's results.json, checked to be comparable with this run."""
    if config.reference_run is None:
        return None
    from mlenergy.diffusion import quality

    if num_frames is not None:
        raise ConfigError("--reference_run compares images; it does not handle videos yet, "
                          "drop it for text-to-video")
    return quality.load_reference(
        config.reference_run, model_id=spec.model_id, seed=config.workload.seed,
        height=shape["height"], width=shape["width"], batch_size=shape["batch_size"],
        inference_steps=shape["inference_steps"], benchmark_iters=benchmark_iters,
        save_images=config.save_images)
