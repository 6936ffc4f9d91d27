"""Bounds on what a run may ask for, checked in `plan.make_plan` before anything loads.

Numbers must be finite; seeds must fit the 64-bit generators; counts and sizes have ceilings, and
sizes must leave the run's activations room in device memory (a lower bound estimated from the
architecture); prompts must be no longer than the text encoders can read; the prompt cache and
the places the run writes must be usable (a local model is checked where resolve.py reads it).
Each refusal is one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from typing import TYPE_CHECKING

from mlenergy.diffusion.inputs.config import ConfigError
from mlenergy.diffusion.planning import prompts

if TYPE_CHECKING:
    from mlenergy.diffusion.planning.run_plan import RunPlan

SEED_MAX = 2**64 - 1  # torch generators take unsigned 64-bit seeds
MAX_BATCH = 1024
MAX_SIDE = 16384  # pixels per side
MAX_STEPS = 10_000
MAX_FRAMES = 2049
MAX_FPS = 240
MAX_BENCHMARK_ITERS = 10_000
MAX_WARMUP_ITERS = 1_000
# Prompts a run may schedule (batch x iterations), so a schedule never strains host memory.
MAX_SCHEDULED_PROMPTS = 1_000_000
# Text encoders keep at most max_sequence_length tokens (77 for CLIP); no token of theirs is
# anywhere near this many characters, so a longer prompt only feeds the tokenizer text that it
# throws away, and copies it into every JSON file.
CHARS_PER_TOKEN_CEILING = 32
CLIP_TOKENS = 77
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NAME_MAX = 255  # bytes of one file name (Linux file systems)


def check(plan: RunPlan) -> None:
    """Every bound on a resolved plan (`finite_numbers` checks the flags as typed)."""
    _counts(plan)
    _seed(plan)
    _memory(plan)
    _prompts(plan)
    _places(plan)
    _collective_timeout()


def _collective_timeout() -> None:
    from mlenergy.diffusion.process import watchdog

    try:
        watchdog.collective_timeout_s()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _fields(obj, prefix: str = "--"):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def finite_numbers(config) -> None:
    for flag, value in _fields(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} is {value}; give a finite number")


def _at_most(flag: str, value: int | None, ceiling: int, why: str = "") -> None:
    if value is not None and value > ceiling:
        raise ConfigError(f"{flag} {value:,} is above the ceiling of {ceiling:,}{why}; "
                          "lower it")


def _counts(plan: RunPlan) -> None:
    _at_most("--workload.batch_size", plan.batch_size, MAX_BATCH)
    _at_most("--workload.height", plan.height, MAX_SIDE, " pixels")
    _at_most("--workload.width", plan.width, MAX_SIDE, " pixels")
    _at_most("--workload.inference_steps", plan.inference_steps, MAX_STEPS)
    _at_most("--warmup_steps", plan.warmup_steps, MAX_STEPS)
    _at_most("--workload.num_frames", plan.num_frames, MAX_FRAMES)
    _at_most("--workload.fps", plan.fps, MAX_FPS)
    _at_most("--benchmark_iters", plan.benchmark_iters, MAX_BENCHMARK_ITERS)
    _at_most("--warmup_iters", plan.warmup_iters, MAX_WARMUP_ITERS)
    scheduled = plan.batch_size * (plan.benchmark_iters + plan.warmup_iters)
    if scheduled > MAX_SCHEDULED_PROMPTS:
        raise ConfigError(f"batch {plan.batch_size:,} x {plan.benchmark_iters + plan.warmup_iters:,}"
                          f" iterations = {scheduled:,} prompts, above the ceiling of "
                          f"{MAX_SCHEDULED_PROMPTS:,}; lower --workload.batch_size or the "
                          "iteration counts")


def _seed(plan: RunPlan) -> None:
    seed = plan.seed
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--workload.seed {seed} is outside 0..2^64-1; pick a seed in range")
    last = seed + plan.benchmark_iters - 1  # iteration i is seeded seed + i
    if last > SEED_MAX:
        raise ConfigError(f"--workload.seed {seed} + {plan.benchmark_iters} iterations passes "
                          f"2^64-1 (iteration i uses seed + i); use a seed of at most "
                          f"{SEED_MAX - plan.benchmark_iters + 1}")


def activation_floor_bytes(plan: RunPlan) -> tuple[int, str]:
    """A lower bound on the activation memory one rank needs, and what it comes from: the
    decoder's output and (image VAEs) its full-resolution feature map, or the denoiser's
    query, key, value and residual stream for this rank's share of the tokens."""
    family = plan.spec.family
    arch = plan.architecture
    itemsize = _DTYPE_BYTES.get(plan.dtype, 2)
    frames = plan.num_frames or 1
    pixels = plan.batch_size * frames * plan.height * plan.width
    vae = arch.get("vae", {})
    # An image VAE holds its first block's feature map at full resolution; video VAEs decode
    # in tiles or a few frames at a time, so only their output is certain to be whole.
    first_channels = (vae.get("block_out_channels") or [0])[0]
    decode_channels = 3 + (first_channels if not plan.task.is_video and not family.vae_tiling
                           else 0)
    decode = pixels * decode_channels * itemsize
    denoiser = arch.get(family.denoiser_slot, {})
    heads, head_dim = denoiser.get("num_attention_heads"), denoiser.get("attention_head_dim")
    # UNets give per-block lists: their widths vary, so only the decoder bounds them here.
    hidden = heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else 0
    latent_frames = 1 + (frames - 1) // family.temporal_factor
    latent_frames = max(1, latent_frames // (denoiser.get("patch_size_t") or 1))
    tokens = (plan.height // family.spatial_factor) * (plan.width // family.spatial_factor) \
        * latent_frames
    denoise = 4 * plan.batch_size * tokens * hidden * itemsize \
        // (plan.ulysses_degree * plan.ring_degree)
    if denoise > decode:
        return denoise, f"{tokens:,} tokens x width {hidden} in the denoiser"
    return decode, f"decoding {pixels:,} pixels"


def _device_memory_bytes(device_type: str) -> int | None:
    if device_type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import torch

    if device_type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return None  # planned for another machine: nothing to compare with


def host_available_bytes() -> int:
    """Host memory this process can still take: MemAvailable, or less where a cgroup (a
    container, a Slurm job) sets a lower limit."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def weight_bytes(plan: RunPlan) -> tuple[int, str] | None:
    """A lower bound on the bytes of weights each process holds at the run's dtype, and what
    they are (None for tiny weights): parameters counted on the meta device from the configs the
    run builds (random weights), or, for pretrained weights, from those that are the model's
    own (registry or checkpoint), not the family's reference model standing in."""
    if plan.tiny_model:
        return None
    from mlenergy.diffusion.models import pipelines

    spec = plan.spec
    slots = [slot for slot in spec.family.components
             if plan.weights == "random" or spec.defaults_source.get(slot, "registry")
             .startswith(("registry", "checkpoint"))]
    counts = pipelines.parameters_per_slot(spec.family, spec.architecture, slots)
    total = sum(counts.values())
    return total * _DTYPE_BYTES[plan.dtype], f"{total / 1e9:,.2f} B parameters in {plan.dtype}"


def _weights_fit(plan: RunPlan) -> int:
    """Refuse weights that cannot fit where they are loaded: each GPU (every rank holds the whole
    pipeline), or host memory on a CPU and with sequential offload (a copy per process on this
    host). Returns what they take of the memory the activations need too."""
    offload = plan.options.enable_sequential_cpu_offload
    in_host = plan.device_type == "cpu" or offload
    have = host_available_bytes() if in_host else _device_memory_bytes(plan.device_type)
    weights = weight_bytes(plan) if have is not None else None
    if weights is None:
        return 0
    size, what = weights
    copies = plan.launch.local_world_size if plan.device_type == "cpu" else 1
    need = size * copies
    if copies > 1:
        what += f", a copy in each of {copies} processes"
    if need > have:
        fixes = (["--workload.dtype bfloat16 (half the bytes)"]
                 if plan.dtype == "float32" and need / 2 <= have else []) \
            + (["--enable_sequential_cpu_offload (weights in host memory)"]
               if not in_host and plan.world_size == 1 else []) \
            + ["a machine with more memory", "--workload.weights tiny for a smoke test"]
        where = "host memory available (MemAvailable)" if in_host else "each GPU's memory"
        raise ConfigError(f"{plan.spec.model_id}'s weights need {need / 1e9:,.1f} GB ({what}), "
                          f"more than the {have / 1e9:,.1f} GB of {where}; use "
                          + ", or ".join(fixes))
    return 0 if offload else need


def _memory(plan: RunPlan) -> None:
    weights = _weights_fit(plan)
    need, what = activation_floor_bytes(plan)
    have = _device_memory_bytes(plan.device_type)
    where = "each GPU" if plan.device_type == "cuda" else "host memory"
    if have is not None and need + weights > have:
        raise ConfigError(
            f"batch {plan.batch_size} at {plan.height}x{plan.width}"
            + (f"x{plan.num_frames} frames" if plan.task.is_video else "")
            + f" needs at least {need / 1e9:,.1f} GB of activations ({what}), more than the "
            f"{have / 1e9:,.1f} GB of {where}"
            + (f" less the {weights / 1e9:,.1f} GB of weights" if weights else "")
            + "; lower the size, frames or batch")


def max_prompt_chars(plan: RunPlan) -> int:
    return max(plan.max_sequence_length or 0, CLIP_TOKENS) * CHARS_PER_TOKEN_CEILING


def _prompts(plan: RunPlan) -> None:
    source = plan.prompts
    try:
        if source.prompts_file is not None:
            pool, where = prompts.read_prompts_file(source.prompts_file), \
                f"prompts file {source.prompts_file}"
        else:
            pool = prompts.check_dataset(source.prompt_dataset, source.prompt_cache_dir,
                                         task=plan.task.name, here=plan.launch.here)
            if pool is None:  # fetched from the hub by the run
                return
            where = f"prompt dataset {source.prompt_dataset}"
    except prompts.PromptsError as err:
        raise ConfigError(str(err)) from None
    ceiling = max_prompt_chars(plan)
    longest = max(range(len(pool)), key=lambda i: len(pool[i]))
    if len(pool[longest]) > ceiling:
        raise ConfigError(
            f"{where}: prompt {longest + 1} has {len(pool[longest]):,} characters, more than the "
            f"{ceiling:,} that {plan.spec.model_id}'s text encoders can read (at most "
            f"{max(plan.max_sequence_length or 0, CLIP_TOKENS)} tokens); shorten it")


def _first_existing(path: Path) -> Path:
    for folder in [path, *path.parents]:
        if folder.exists() or folder.is_symlink():
            return folder
    return Path("/")


def _places(plan: RunPlan) -> None:
    base = plan.base_dir
    longest = max(plan.run_dir.parts, key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > NAME_MAX:
        raise ConfigError(f"the run directory's path holds a name of {len(os.fsencode(longest))} "
                          f"bytes ({longest[:24]}...), more than the {NAME_MAX} file systems "
                          "allow; shorten --workload.base_dir or --workload.model_name")
    existing = _first_existing(base)
    if not existing.is_dir():
        what = "is a file" if existing == base else f"lies under {existing}, a file"
        raise ConfigError(f"--workload.base_dir {base} {what}; pass a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workload.base_dir {base}: {existing} is not writable "
                          "(read-only?); pass a directory this user can write")
    cache = plan.prompts.prompt_cache_dir or prompts.default_cache_dir()
    existing = _first_existing(Path(cache))
    if plan.prompts.prompts_file is None and not existing.is_dir():
        raise ConfigError(f"the prompt cache directory {cache} "
                          + ("is a file" if existing == Path(cache) else
                             f"lies under {existing}, a file")
                          + "; pass a directory to --workload.prompt_cache_dir (or set "
                          "MLENERGY_CACHE_DIR)")
    reference = plan.reference_run
    if reference is not None and Path(reference).resolve() == plan.run_dir.resolve():
        raise ConfigError(f"--reference_run {reference} is this run's own directory: the run "
                          "would overwrite the images it compares against; compare with "
                          "another run")
