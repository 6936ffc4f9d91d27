"""The run's facts as a person reads them in the log: the plan (one short line on the console, in
full in driver_log.txt), the environment and the provenance. Words, never Python reprs."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlenergy.diffusion.output.environment import RunEnvironment
    from mlenergy.diffusion.output.provenance import Provenance

OPTION_DEFAULTS = {"compile_backend": "inductor", "compile_scope": "transformer",
                   "compile_mode": "default"}


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) or "none"
    if dataclasses.is_dataclass(value) and hasattr(value, "name"):
        return str(value.name)  # a Task
    return str(value)


def options_text(configurations: dict) -> str:
    """The performance options that are on, in words: `torch compile (backend eager), fbcache
    (threshold 0.2)`; `none` when every option is off."""
    on = []
    for key, value in configurations.items():
        if value is True:
            on.append(key.removeprefix("use_").removeprefix("enable_").replace("_", " "))
        elif value not in (None, False) and not isinstance(value, bool) \
                and OPTION_DEFAULTS.get(key) != value:
            on.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(on) or "none"


def plan_line(plan) -> str:
    """The plan in one line: model, weights, shape, parallelism, iterations, options."""
    video = (f", {plan.num_frames} frames at {plan.fps} fps" if plan.task.is_video else "")
    processes = f"{plan.world_size} process{'es' if plan.world_size != 1 else ''}"
    return (f"{plan.spec.model_id} ({plan.weights} weights, {plan.dtype}), {plan.task.name}: "
            f"batch {plan.batch_size}, {plan.height}x{plan.width}{video}, "
            f"{plan.inference_steps} steps, guidance {plan.guidance_scale:g}, seed {plan.seed}; "
            f"ulysses {plan.ulysses_degree} x ring {plan.ring_degree} on {processes} "
            f"({plan.device_type}); warm-up {plan.warmup_iters} x {plan.warmup_steps} steps, "
            f"measured {plan.benchmark_iters}; "
            f"options: {options_text(plan.options.configurations())}"
            + (f"; reference run {plan.reference_run}" if plan.reference_run else ""))


def plan_in_full(plan) -> str:
    """Every setting of the plan, one `name: value` line each (for driver_log.txt)."""
    spec = plan.spec
    rows = [("model id", spec.model_id), ("loaded from", spec.load_id),
            ("family", spec.family_name), ("revision", spec.revision), ("variant", spec.variant)]
    skipped = {"spec", "architecture", "launch", "options", "reference", "prompts",
               "flags_given"}
    rows += [(f.name.replace("_", " "), getattr(plan, f.name))
             for f in dataclasses.fields(plan) if f.name not in skipped]
    rows += [(f"launch: {f.name.replace('_', ' ')}", getattr(plan.launch, f.name))
             for f in dataclasses.fields(plan.launch)]
    rows += [(f"option: {key.replace('_', ' ')}", value)
             for key, value in plan.options.configurations().items()]
    # As given on the command line (none: left to the plan, whose values are above).
    rows += list(plan.flags_given)
    return "\n".join(f"  {name}: {_value(value)}" for name, value in rows)


def _gpus_text(gpus: list[dict]) -> str:
    """`8 x NVIDIA H100 80GB HBM3 (700 W limit, 85.5 GB)`, kinds in order of first index."""
    kinds = Counter((g.get("name"), g.get("power_limit_w"), g.get("memory_gb")) for g in gpus)
    parts = []
    for (name, limit, memory), count in kinds.items():
        details = ", ".join(part for part in (
            f"{limit:g} W limit" if isinstance(limit, (int, float)) else "",
            f"{memory:.1f} GB" if isinstance(memory, (int, float)) else "") if part)
        parts.append(f"{count} x {name or 'unnamed GPU'}" + (f" ({details})" if details else ""))
    return ", ".join(parts)


def environment_text(env: RunEnvironment) -> str:
    """Host, packages, CUDA, driver and GPUs in one line of words."""
    installed = ", ".join(f"{name} {version}" for name, version in env.packages.items() if version)
    absent = [name for name, version in env.packages.items() if not version]
    parts = [f"Python {env.python}; {installed}"
             + (f" ({', '.join(absent)} not installed)" if absent else ""),
             f"host {env.hostname}, CPU {env.cpu}"]
    if env.gpus:
        parts.append(f"GPUs {_gpus_text(env.gpus)}; driver {env.driver}, CUDA "
                     f"{env.cuda or 'none'}" + (f", cuDNN {env.cudnn}" if env.cudnn else ""))
    else:
        parts.append("no GPUs" + (f" (CUDA {env.cuda})" if env.cuda else ""))
    return "; ".join(parts)


def provenance_text(origin: Provenance) -> str:
    """`mlenergy-diffusion 0.1.0, git <commit> (uncommitted changes); command: <as typed>`,
    the command last, whole, ready to paste."""
    if origin.git_commit is None:
        where = "not a git checkout"
    else:
        where = f"git {origin.git_commit}" + (" (uncommitted changes)" if origin.git_dirty
                                               else "")
    return (f"mlenergy-diffusion {origin.benchmark_version}, {where}; command: "
            f"{origin.command_line}")


def profile_text(profile) -> str:
    """One line of a rank's profile (output/record.py RankProfile): the step's milliseconds by
    kernel class and idle, and what waiting cost."""
    per_step = profile.per_step
    parts = [f"{name} {values['ms_per_step']:.1f}" for name, values in profile.by_class.items()
             if values["kernels_per_step"]]
    energy = (f"; {profile.energy_per_step_j:.1f} J per step, "
              f"{profile.waiting_energy_j:.1f} J of it waiting"
              if profile.energy_per_step_j is not None and profile.waiting_energy_j is not None
              else "; energy not sampled")
    kernels = ", ".join(parts) or "no GPU kernels"
    return (f"step {per_step['wall_s'] * 1e3:.1f} ms: {kernels}, idle "
            f"{per_step['idle_s'] * 1e3:.1f} (ms per step){energy}")


def measured_waiting_text(measured) -> str:
    """`rank 0 (GPU 0): 41.2 ms of 2,104 ms denoising waiting, 9.1 J of 1,530 J; ...`."""
    parts = []
    for m in measured:
        energy = (f", {m.waiting_energy_j:,.1f} J of {m.denoising_energy_j:,.1f} J"
                  if m.waiting_energy_j is not None else ", energy not measured")
        parts.append(f"rank {m.rank} (GPU {m.gpu}): {m.waiting_s * 1e3:,.1f} ms of "
                     f"{m.denoising_s * 1e3:,.1f} ms denoising waiting{energy}; profiled step "
                     f"{m.profiled_over_measured_step:.2f}x the measured one")
    return "; ".join(parts)
