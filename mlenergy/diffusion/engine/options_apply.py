"""Applying the resolved performance options to a built pipeline, on every rank, and reporting
what they did: compilation, FP8 T5, sequential CPU offload, attention backend. What the options
are, and whether they are allowed, is decided in options.py before anything loads."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from mlenergy.diffusion.kernels import attention, quantize
from mlenergy.diffusion.kernels.quantize import module_bytes
from mlenergy.diffusion.planning.options import ATTENTION_BACKENDS
from mlenergy.diffusion.probes.compile import CompileReport, kernel_cache_report
from mlenergy.diffusion.process import torch_compat
from mlenergy.diffusion.results.sections import Section

if TYPE_CHECKING:
    from mlenergy.diffusion.planning.run_plan import RunPlan

logger = logging.getLogger("mlenergy.diffusion")


@dataclass
class AttentionReport(Section):
    """results.json `attention`: who runs the denoiser's attention and with which kernel."""

    requested: str | None
    # xfuser:<backend> when xDiT's processors run attention, diffusers:<backend> otherwise.
    used: str
    kernel: str | None
    xfuser_selected: str | None
    processors: list[str]
    # attention.installed_report(): the fa3-fwd wheel, where installed.
    fa3: dict | None


@dataclass
class OptionEffects(Section):
    """What the options did to the pipeline, in results.json order: the FP8 T5 encoder's and the
    FP8 denoiser's reports (None when off), the attention actually used, and --fuse_qkv's
    report."""

    fp8_t5_encoder: dict | None
    quantized_denoiser: dict | None
    attention: AttentionReport
    # --fuse_qkv's report; absent from results written before the option existed.
    fused_qkv: dict | None = None

    @classmethod
    def from_results(cls, entries: dict) -> OptionEffects:
        return cls(**{**entries, "attention": AttentionReport.from_results(entries["attention"])})


def prepare_weights(plan: RunPlan, pipeline, denoiser) -> dict:
    """Options that change weights or kernels, before xDiT wraps the pipeline. Returns their
    results.json entries."""
    fp8_t5 = quantize_t5_to_fp8(plan, pipeline)
    select_attention_backend(plan, denoiser)
    return {"fp8_t5_encoder": fp8_t5}


def finish_pipeline(plan: RunPlan, pipeline, denoiser, device: torch.device,
                    effects: dict) -> str | None:
    """Options applied after xDiT has wrapped the pipeline (its step cache and attention
    processors must be inside what gets compiled); their results.json entries go into
    `effects`. Returns what was compiled."""
    effects["fused_qkv"] = fuse_qkv(plan, denoiser)
    effects["quantized_denoiser"] = quantize_denoiser(plan, denoiser)
    apply_inductor_settings(plan.options)
    compiled = compile_denoiser(plan, denoiser)
    enable_offload(plan, pipeline, device)
    return compiled


def fuse_qkv(plan: RunPlan, denoiser) -> dict | None:
    """--fuse_qkv: one QKV matmul per attention instead of three, before compiling."""
    if not plan.options.fuse_qkv:
        return None
    return {"fused_attention_layers": quantize.fuse_qkv(denoiser)}


def quantize_denoiser(plan: RunPlan, denoiser) -> dict | None:
    """FP8 of the denoiser: fuse each attention's QKV projections (one activation quantization
    instead of three), then quantize every linear layer; before compiling, so the compiled code
    runs the FP8 matmuls."""
    if plan.options.quantize_denoiser is None:
        return None
    fused = quantize.fuse_qkv(denoiser)
    return {"fused_attention_layers": fused, **quantize.quantize_fp8(denoiser)}


# ---------------------------------------------------------------- compilation

# Process-wide inductor settings that change the kernels or the first call's length, as
# results.json `compile.inductor_settings` reports them (`--compile_mode` modes are per call of
# torch.compile and show as `compile.mode` instead).
INDUCTOR_SETTINGS = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions",
                     "max_autotune", "max_autotune_pointwise", "max_autotune_gemm",
                     "epilogue_fusion", "fx_graph_cache", "triton.cudagraphs",
                     "triton.unique_kernel_names", "force_fuse_int_mm_with_mul",
                     "reorder_for_compute_comm_overlap")
# --compile_autotune: coordinate descent over each Triton kernel's block sizes and warps at its
# first call, in all directions (what torchao's FP8 config would set for the whole process).
AUTOTUNE_SETTINGS = {"coordinate_descent_tuning": True,
                     "coordinate_descent_check_all_directions": True}


def inductor_settings() -> dict:
    """The values of INDUCTOR_SETTINGS in force now (None for one this torch lacks)."""
    from torch._inductor import config

    values = {}
    for name in INDUCTOR_SETTINGS:
        holder, _, leaf = name.rpartition(".")
        owner = getattr(config, holder) if holder else config
        values[name] = getattr(owner, leaf, None)
    return values


# --compile_overlap: inductor moves each graph's collectives to overlap with computation.
OVERLAP_SETTINGS = {"reorder_for_compute_comm_overlap": True}


def apply_inductor_settings(options) -> dict:
    """Inductor's settings for this run: with --compile_autotune, coordinate-descent tuning;
    with --compile_overlap, compute/communication reordering; otherwise nothing is changed (and
    nothing else here changes them). Returns what was set."""
    settings = {**(AUTOTUNE_SETTINGS if options.compile_autotune else {}),
                **(OVERLAP_SETTINGS if options.compile_overlap else {})}
    if not settings:
        return {}
    from torch._inductor import config

    for name, value in settings.items():
        setattr(config, name, value)
    if options.compile_autotune:
        logger.info("Inductor: coordinate-descent tuning on (--compile_autotune): the first "
                    "call benchmarks Triton kernel configurations")
        torch_compat.reuse_tuned_kernel_configs()
    if options.compile_overlap:
        logger.info("Inductor: collectives reordered to overlap computation "
                    "(--compile_overlap)")
    return settings


# Graphs dynamo may keep per compiled function before it silently runs it eager: a process
# measuring several batch sizes compiles one static graph per size.
RECOMPILE_LIMIT = 64


def _torch_compile_kwargs(plan: RunPlan) -> dict:
    # Static shapes: a process measuring several batch sizes (`--then`) compiles each as a point
    # launched alone does, never one graph generic in the batch (which would time other kernels).
    kwargs = {"backend": plan.options.compile_backend, "dynamic": False}
    import torch._dynamo

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") \
        else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit),
                                             RECOMPILE_LIMIT))
    if plan.options.compile_mode != "default":
        kwargs["mode"] = plan.options.compile_mode
    return kwargs


def compile_denoiser(plan: RunPlan, denoiser) -> str | None:
    """Compile what xDiT does not: repeated blocks, or the forward of a denoiser whose family
    runs through the diffusers pipeline. Call after xDiT has wrapped the pipeline (its step
    cache and attention processors must be inside what gets compiled). Returns what was
    compiled, for the results."""
    options = plan.options
    if not options.use_torch_compile:
        return None
    mark_cudagraph_steps(plan, denoiser)
    if options.compile_through_xdit:
        if options.step_cache:
            # Measured on FLUX.1-dev (docs/benchmarks.md): minutes of compiling against seconds.
            logger.warning("The step cache's data-dependent branch breaks xDiT's whole-forward "
                           "graph into many; --compile_scope blocks compiles far faster")
        return "forward of the denoiser, by xDiT"
    kwargs = _torch_compile_kwargs(plan)
    if options.compile_scope == "blocks":
        names = set(getattr(denoiser, "_repeated_blocks", None) or ())
        count = sum(type(m).__name__ in names for m in denoiser.modules())
        denoiser.compile_repeated_blocks(**kwargs)
        return f"{count} repeated blocks ({', '.join(sorted(names))}), by diffusers"
    # The forward alone, as xDiT does it: hooks on the module stay outside the compiled code.
    denoiser.forward = torch.compile(denoiser.forward, **kwargs)
    return "forward of the denoiser"


def mark_cudagraph_steps(plan: RunPlan, denoiser) -> bool:
    """With a CUDA-graph compile mode, start a new CUDA-graph step at every denoiser call.

    Inductor's CUDA-graph trees replay a recorded path of graphs from its root only once they
    see a new step; whether they do on their own depends on how the compiled code is entered.
    With repeated blocks compiled one by one, every block call inside one denoiser call is
    part of the same step; without a mark, each step's calls extend the path instead of
    replaying it (a new recording per block per step). torch's documented remedy is a mark
    before each model invocation; the outputs of the previous denoiser call are consumed by
    the scheduler by then. Returns whether the mark is installed."""
    from mlenergy.diffusion.planning.options import CUDA_GRAPH_MODES

    if plan.options.compile_mode not in CUDA_GRAPH_MODES:
        return False

    def new_cudagraph_step(module, args):
        torch.compiler.cudagraph_mark_step_begin()

    denoiser.register_forward_pre_hook(new_cudagraph_step)
    return True


@contextlib.contextmanager
def compile_arguments(plan: RunPlan) -> Iterator[list]:
    """While xDiT wraps the pipeline, give its `torch.compile` call our backend and mode.

    xDiT decides what to compile (the denoiser's forward, after any step cache) and compiles
    lazily, at the first call; it calls torch.compile with no arguments. Yields the list of
    calls seen, so the caller can check that xDiT really compiled something.
    """
    calls: list = []
    if not plan.options.compile_through_xdit:
        yield calls
        return
    original = torch.compile
    extra = _torch_compile_kwargs(plan)

    def compile_with_our_arguments(model=None, **kwargs):
        calls.append(getattr(model, "__qualname__", type(model).__name__))
        return original(model, **{**extra, **kwargs})

    torch.compile = compile_with_our_arguments
    try:
        yield calls
    finally:
        torch.compile = original


def compile_report(plan: RunPlan, warmup_times: list[float], warmup_compiles: list,
                   measured_compiles: tuple, measured_times: list[float],
                   compiled: str | None = None) -> CompileReport | None:
    """results.json `compile`: what compiling cost and whether measurement was compile-free."""
    options = plan.options
    if not options.use_torch_compile:
        return None
    graphs_measured, seconds_measured = measured_compiles
    steady = min(measured_times) if measured_times else None
    first = warmup_times[0] if warmup_times else None
    inductor = options.compile_backend == "inductor"
    return CompileReport(
        backend=options.compile_backend, mode=options.compile_mode, scope=options.compile_scope,
        autotune=options.compile_autotune, compiled=compiled,
        compile_time_s=sum(s for _, s in warmup_compiles if s is not None)
        if all(s is not None for _, s in warmup_compiles) else None,
        first_warmup_iteration_s=first,
        **first_call_overhead(warmup_times),
        first_warmup_minus_fastest_measured_s=(first - steady)
        if first is not None and steady is not None else None,
        graphs_compiled_per_warmup_iteration=[g for g, _ in warmup_compiles],
        graphs_compiled_during_measurement=graphs_measured,
        compile_seconds_during_measurement=seconds_measured,
        recompiled_during_measurement=None if graphs_measured is None else graphs_measured > 0,
        kernel_cache=kernel_cache_report() if inductor else None,
        inductor_settings=inductor_settings() if inductor else None)


def first_call_overhead(warmup_times: list[float]) -> dict:
    """What the first call cost beyond a steady one, whatever it was spent on (compiling,
    loading kernels, tuning them at run time): the first warm-up iteration minus the fastest
    later one, which has the same prompts' shapes and steps."""
    later = warmup_times[1:]
    steady = min(later) if later else None
    return {"steady_warmup_iteration_s": steady,
            "first_call_overhead_s": warmup_times[0] - steady if steady is not None else None}


# ---------------------------------------------------------------- FP8 T5

def quantize_t5_to_fp8(plan: RunPlan, pipeline) -> dict | None:
    """FP8 (qfloat8) weights for the T5 encoder's linear layers, as xDiT's own examples do it.
    Returns results.json `fp8_t5_encoder`: the encoder's bytes before and after."""
    if not plan.options.use_fp8_t5_encoder:
        return None
    from optimum.quanto import freeze, qfloat8, quantize

    slot = plan.spec.t5_slot
    encoder = getattr(pipeline, slot)
    before = module_bytes(encoder)
    quantize(encoder, weights=qfloat8)
    freeze(encoder)
    after = module_bytes(encoder)
    logger.info("T5 encoder (%s) in FP8: %.3f GB -> %.3f GB", slot, before / 1e9, after / 1e9)
    return {"slot": slot, "weights": "qfloat8", "library": "optimum-quanto",
            "bytes_before": before, "bytes_after": after}


# ---------------------------------------------------------------- offload, attention

def enable_offload(plan: RunPlan, pipeline, device: torch.device) -> None:
    """diffusers' sequential offload: weights go back to CPU memory and each submodule is
    moved to the GPU only while it runs."""
    if plan.options.enable_sequential_cpu_offload:
        pipeline.to("cpu")
        pipeline.enable_sequential_cpu_offload(device=device)


def select_attention_backend(plan: RunPlan, denoiser) -> None:
    """One process: xDiT leaves attention to diffusers, so the backend is set there. With
    sequence parallelism xDiT's processors use the backend given in its engine config. fa3
    first points both at the fa3-fwd wheel's kernel."""
    name = plan.options.attention_backend
    if name == "fa3":
        attention.install_fa3()
    if name is None or plan.ulysses_degree * plan.ring_degree > 1:
        return
    denoiser.set_attention_backend(ATTENTION_BACKENDS[name].diffusers_name)


def xfuser_backend_name(plan: RunPlan) -> str | None:
    name = plan.options.attention_backend
    return None if name is None else ATTENTION_BACKENDS[name].xfuser_name


def attention_report(plan: RunPlan, denoiser) -> dict:
    """results.json `attention`: who runs the denoiser's attention and with which kernel."""
    from xfuser.core.distributed import get_runtime_state

    # With sequence parallelism xDiT wraps each attention module; the wrapper's processor is
    # xDiT's and the wrapped module keeps diffusers' (unused) one, so look at every module.
    found = {getattr(m, "processor", None) for m in denoiser.modules()}
    processors = sorted({type(p).__name__ for p in found if p is not None})
    via_xfuser = any(name.startswith("xFuser") for name in processors)
    xfuser_backend = get_runtime_state().attention_backend.name
    if via_xfuser:
        used = f"xfuser:{xfuser_backend}"
    else:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        default = _AttentionBackendRegistry.get_active_backend()[0]
        chosen = {getattr(m.processor, "_attention_backend", None) or default
                  for m in denoiser.modules() if getattr(m, "processor", None) is not None}
        used = "diffusers:" + ",".join(sorted(getattr(b, "value", str(b)) for b in chosen))
    return {
        "requested": plan.options.attention_backend,
        "used": used,
        "kernel": attention.kernel_name(plan.options.attention_backend, used),
        "xfuser_selected": xfuser_backend,
        "processors": processors,
        "fa3": attention.installed_report(),
    }
