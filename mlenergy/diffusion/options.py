"""Performance options: checking them before anything loads, applying them, and reporting what
they did (compilation, FP8 T5, sequential CPU offload, step caches, attention backend).

The checks run inside `plan.make_plan`, so a bad combination ends the run with one line and
exit 2. Everything else runs after the pipeline is built, on every rank.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from mlenergy.diffusion.plan import ConfigError

if TYPE_CHECKING:
    from mlenergy.diffusion.config import BenchmarkConfig
    from mlenergy.diffusion.plan import RunPlan
    from mlenergy.diffusion.registry import ModelSpec

logger = logging.getLogger("mlenergy.diffusion")

COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")
# torch.compile's modes (torch._inductor.list_modes()); "default" is what xDiT uses.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# What --use_torch_compile compiles: the denoiser's whole forward, or each repeated block.
COMPILE_SCOPES = ("transformer", "blocks")


@dataclass(frozen=True)
class AttentionBackend:
    xfuser_name: str  # xfuser AttentionBackendType member
    diffusers_name: str  # diffusers AttentionBackendName value (one-process runs)
    needs_cuda: bool
    needs_module: str | None = None  # package that provides the kernel


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": AttentionBackend("SDPA", "native", needs_cuda=False),
    "sdpa_math": AttentionBackend("SDPA_MATH", "_native_math", needs_cuda=False),
    "sdpa_flash": AttentionBackend("SDPA_FLASH", "_native_flash", needs_cuda=True),
    "sdpa_efficient": AttentionBackend("SDPA_EFFICIENT", "_native_efficient", needs_cuda=True),
    "cudnn": AttentionBackend("CUDNN", "_native_cudnn", needs_cuda=True),
    "flash": AttentionBackend("FLASH", "flash", needs_cuda=True, needs_module="flash_attn"),
    "flash_3": AttentionBackend("FLASH_3", "_flash_3", needs_cuda=True,
                                needs_module="flash_attn_interface"),
}


# ---------------------------------------------------------------- checks (before loading)

def check(config: BenchmarkConfig, spec: ModelSpec, device_type: str) -> None:
    _check_compile(config, spec, device_type)
    _check_caches(config, spec)
    _check_fp8_t5(config, spec)
    _check_offload(config, device_type)
    _check_attention(config, device_type)


def _check_compile(config: BenchmarkConfig, spec: ModelSpec, device_type: str) -> None:
    if not config.use_torch_compile:
        flag = ("--compile_mode" if config.compile_mode is not None
                else "--compile_backend" if config.compile_backend != "inductor"
                else "--compile_scope" if config.compile_scope is not None else None)
        if flag is not None:
            raise ConfigError(f"{flag} needs --use_torch_compile; add it or drop {flag}")
        return
    if spec.family.denoiser_slot != "transformer":
        raise ConfigError(f"xDiT compiles transformer denoisers only; {spec.model_id} is a UNet "
                          f"({spec.family_name}): drop --use_torch_compile")
    if config.compile_scope is not None and config.compile_scope not in COMPILE_SCOPES:
        raise ConfigError(f"unknown --compile_scope {config.compile_scope!r}; choose one of: "
                          + ", ".join(COMPILE_SCOPES))
    if config.compile_scope == "blocks" and not repeated_blocks(spec):
        denoiser = spec.family.components[spec.family.denoiser_slot].cls
        raise ConfigError(f"--compile_scope blocks: diffusers' {denoiser} ({spec.model_id}) "
                          "does not name its repeated blocks; use --compile_scope transformer")
    if config.compile_backend not in COMPILE_BACKENDS:
        raise ConfigError(f"unknown --compile_backend {config.compile_backend!r}; choose one of: "
                          + ", ".join(COMPILE_BACKENDS))
    if config.compile_mode is not None:
        if config.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"unknown --compile_mode {config.compile_mode!r}; choose one of: "
                              + ", ".join(COMPILE_MODES))
        if config.compile_backend != "inductor":
            raise ConfigError(f"--compile_mode is an inductor setting; drop it or use "
                              f"--compile_backend inductor (not {config.compile_backend})")
        if config.compile_mode in _CUDA_GRAPH_MODES and device_type != "cuda":
            raise ConfigError(f"--compile_mode {config.compile_mode} captures CUDA graphs and "
                              "needs a GPU; use max-autotune-no-cudagraphs or default")
    if config.warmup_iters is not None and config.warmup_iters < 2:
        raise ConfigError(
            f"--use_torch_compile needs --warmup_iters 2 or more (got {config.warmup_iters}): "
            "the first warm-up iteration compiles, the second shows that nothing recompiles"
        )
    if (config.compile_backend == "inductor" and device_type != "cuda"
            and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))):
        raise ConfigError("inductor on CPU compiles C++ and no C++ compiler is on PATH; install "
                          "g++ or use --compile_backend aot_eager")


def _check_caches(config: BenchmarkConfig, spec: ModelSpec) -> None:
    if config.use_teacache and config.use_fbcache:
        raise ConfigError("--use_teacache and --use_fbcache are exclusive; choose one")
    if (config.use_teacache or config.use_fbcache) and not spec.family.supports_cache:
        flag = "--use_teacache" if config.use_teacache else "--use_fbcache"
        raise ConfigError(
            f"{flag} works only for the FLUX family in xDiT; {spec.model_id} is "
            f"{spec.family_name}"
        )
    if config.cache_threshold is not None:
        if not (config.use_teacache or config.use_fbcache):
            raise ConfigError("--cache_threshold sets the TeaCache / FBCache threshold; add "
                              "--use_teacache or --use_fbcache, or drop it")
        if not config.cache_threshold > 0:
            raise ConfigError(f"--cache_threshold must be above 0, got {config.cache_threshold}")


def _check_fp8_t5(config: BenchmarkConfig, spec: ModelSpec) -> None:
    if not config.use_fp8_t5_encoder:
        return
    if spec.t5_slot is None:
        raise ConfigError(f"{spec.model_id} ({spec.family_name}) has no T5 text encoder; drop "
                          "--use_fp8_t5_encoder")
    if importlib.util.find_spec("optimum") is None or \
            importlib.util.find_spec("optimum.quanto") is None:
        raise ConfigError("--use_fp8_t5_encoder needs optimum-quanto: "
                          "pip install 'mlenergy-diffusion-benchmark[fp8]'")


def _check_offload(config: BenchmarkConfig, device_type: str) -> None:
    if not config.enable_sequential_cpu_offload:
        return
    degree = config.ulysses_degree * config.ring_degree
    if degree > 1:
        raise ConfigError(
            f"--enable_sequential_cpu_offload runs one process; it cannot combine with "
            f"--ulysses_degree {config.ulysses_degree} x --ring_degree {config.ring_degree}"
        )
    if device_type != "cuda":
        raise ConfigError("--enable_sequential_cpu_offload moves weights from CPU memory to a "
                          "GPU and needs one; drop it on CPU-only machines")


def _check_attention(config: BenchmarkConfig, device_type: str) -> None:
    name = config.attention_backend
    if name is None:
        return
    backend = ATTENTION_BACKENDS.get(name)
    if backend is None:
        raise ConfigError(f"unknown --attention_backend {name!r}; choose one of: "
                          + ", ".join(ATTENTION_BACKENDS))
    if backend.needs_cuda and device_type != "cuda":
        on_cpu = ", ".join(n for n, b in ATTENTION_BACKENDS.items() if not b.needs_cuda)
        raise ConfigError(f"--attention_backend {name} needs a GPU; on CPU use {on_cpu}")
    if backend.needs_module and importlib.util.find_spec(backend.needs_module) is None:
        raise ConfigError(f"--attention_backend {name} needs the {backend.needs_module} package, "
                          "which is not installed; install it or choose another backend")


# ---------------------------------------------------------------- compilation

def repeated_blocks(spec: ModelSpec) -> tuple[str, ...]:
    """Class names of the denoiser's repeated blocks, as diffusers declares them for regional
    compilation; empty where it declares none."""
    import diffusers

    cls = getattr(diffusers, spec.family.components[spec.family.denoiser_slot].cls, None)
    return tuple(getattr(cls, "_repeated_blocks", None) or ())


def compile_scope(config: BenchmarkConfig) -> str:
    return config.compile_scope or "transformer"


def compiles_through_xdit(plan: RunPlan) -> bool:
    """xDiT compiles the whole denoiser forward itself, in pipeline classes it has."""
    return (plan.config.use_torch_compile and compile_scope(plan.config) == "transformer"
            and plan.spec.family.xfuser_pipeline is not None)


def _torch_compile_kwargs(config: BenchmarkConfig) -> dict:
    kwargs = {"backend": config.compile_backend}
    if config.compile_mode not in (None, "default"):
        kwargs["mode"] = config.compile_mode
    return kwargs


def compile_denoiser(plan: RunPlan, denoiser) -> str | None:
    """Compile what xDiT does not: repeated blocks, or the forward of a denoiser whose family
    runs through the diffusers pipeline. Call after xDiT has wrapped the pipeline (its step
    cache and attention processors must be inside what gets compiled). Returns what was
    compiled, for the results."""
    if not plan.config.use_torch_compile:
        return None
    if compiles_through_xdit(plan):
        if plan.config.use_teacache or plan.config.use_fbcache:
            # Measured on FLUX.1-dev (docs/benchmarks.md): minutes of compiling against seconds.
            logger.warning("The step cache's data-dependent branch breaks xDiT's whole-forward "
                           "graph into many; --compile_scope blocks compiles far faster")
        return "forward of the denoiser, by xDiT"
    kwargs = _torch_compile_kwargs(plan.config)
    if compile_scope(plan.config) == "blocks":
        names = set(getattr(denoiser, "_repeated_blocks", None) or ())
        count = sum(type(m).__name__ in names for m in denoiser.modules())
        denoiser.compile_repeated_blocks(**kwargs)
        return f"{count} repeated blocks ({', '.join(sorted(names))}), by diffusers"
    # The forward alone, as xDiT does it: hooks on the module stay outside the compiled code.
    denoiser.forward = torch.compile(denoiser.forward, **kwargs)
    return "forward of the denoiser"


@contextlib.contextmanager
def compile_arguments(plan: RunPlan) -> Iterator[list]:
    """While xDiT wraps the pipeline, give its `torch.compile` call our backend and mode.

    xDiT decides what to compile (the denoiser's forward, after any step cache) and compiles
    lazily, at the first call; it calls torch.compile with no arguments. Yields the list of
    calls seen, so the caller can check that xDiT really compiled something.
    """
    calls: list = []
    if not compiles_through_xdit(plan):
        yield calls
        return
    original = torch.compile
    extra = _torch_compile_kwargs(plan.config)

    def compile_with_our_arguments(model=None, **kwargs):
        calls.append(getattr(model, "__qualname__", type(model).__name__))
        return original(model, **{**extra, **kwargs})

    torch.compile = compile_with_our_arguments
    try:
        yield calls
    finally:
        torch.compile = original


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
    }


def compile_report(plan: RunPlan, warmup_times: list[float], warmup_compiles: list,
                   measured_compiles: tuple, measured_times: list[float],
                   compiled: str | None = None) -> dict | None:
    """results.json `compile`: what compiling cost and whether measurement was compile-free."""
    if not plan.config.use_torch_compile:
        return None
    graphs_measured, seconds_measured = measured_compiles
    steady = min(measured_times) if measured_times else None
    first = warmup_times[0] if warmup_times else None
    return {
        "backend": plan.config.compile_backend,
        "mode": plan.config.compile_mode or "default",
        "scope": compile_scope(plan.config),
        "compiled": compiled,
        "compile_time_s": sum(s for _, s in warmup_compiles if s is not None)
        if all(s is not None for _, s in warmup_compiles) else None,
        "first_warmup_iteration_s": first,
        "first_warmup_minus_fastest_measured_s": (first - steady)
        if first is not None and steady is not None else None,
        "graphs_compiled_per_warmup_iteration": [g for g, _ in warmup_compiles],
        "graphs_compiled_during_measurement": graphs_measured,
        "compile_seconds_during_measurement": seconds_measured,
        "recompiled_during_measurement": None if graphs_measured is None else graphs_measured > 0,
        "kernel_cache": kernel_cache_report() if plan.config.compile_backend == "inductor"
        else None,
    }


# ---------------------------------------------------------------- FP8 T5

def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds, looking inside tensor subclasses (quantized weights keep an
    FP8 payload and a scale, while reporting the original dtype and shape)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(t) for t in (*module.parameters(), *module.buffers()))


def quantize_t5_to_fp8(plan: RunPlan, pipeline) -> dict | None:
    """FP8 (qfloat8) weights for the T5 encoder's linear layers, as xDiT's own examples do it.
    Returns results.json `fp8_t5_encoder`: the encoder's bytes before and after."""
    if not plan.config.use_fp8_t5_encoder:
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
    if plan.config.enable_sequential_cpu_offload:
        pipeline.to("cpu")
        pipeline.enable_sequential_cpu_offload(device=device)


def select_attention_backend(plan: RunPlan, denoiser) -> None:
    """One process: xDiT leaves attention to diffusers, so the backend is set there. With
    sequence parallelism xDiT's processors use the backend given in its engine config."""
    name = plan.config.attention_backend
    if name is None or plan.ulysses_degree * plan.ring_degree > 1:
        return
    denoiser.set_attention_backend(ATTENTION_BACKENDS[name].diffusers_name)


def xfuser_backend_name(plan: RunPlan) -> str | None:
    name = plan.config.attention_backend
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
        "requested": plan.config.attention_backend,
        "used": used,
        "xfuser_selected": xfuser_backend,
        "processors": processors,
    }
