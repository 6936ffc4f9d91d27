"""Performance options, decided once: every default is resolved and every combination checked
here, before anything loads, into one frozen `Options` value. Everything downstream (xDiT's
engine, what gets compiled, the run directory's name, results.json `configurations`, report
labels) reads that value; `options_apply.py` applies it to a built pipeline.

An option is a field of `Options`. Its metadata says how it shows in the run directory's name
(`dir`: the token, and the values that leave the name unchanged), so adding an option touches
config.py (the flag), this module (field, default, check) and options_apply.py (its effect).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlenergy.diffusion.inputs.config import DEFAULT_CACHE_THRESHOLD, BenchmarkConfig, ConfigError

if TYPE_CHECKING:
    from mlenergy.diffusion.models.registry import ModelSpec
    from mlenergy.diffusion.process.launch import Launch

COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")
# torch.compile's modes (torch._inductor.list_modes()); "default" is what xDiT uses.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
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
    # FlashAttention-3 from the fa3-fwd wheel, through the same two entry points as flash_3
    # (attention.py); checked by attention.fa3_refusal.
    "fa3": AttentionBackend("FLASH_3", "_flash_3", needs_cuda=True),
}


def _in_dir(token: str, *unchanged, text: str | None = None) -> dict:
    """Field metadata: `+token-value` in the run directory's name unless the value is one of
    `unchanged` (None always is); `text` replaces the value (for flags such as cache-fbcache)."""
    return {"dir": (token, (None, *unchanged), text)}


@dataclass(frozen=True)
class Options:
    """Resolved performance options. Field names and order are results.json `configurations`
    keys; None means "does not apply" (a compile mode without compiling, say)."""

    use_torch_compile: bool = False
    compile_mode: str | None = field(default=None, metadata=_in_dir("compilemode", "default"))
    compile_backend: str | None = field(default=None,
                                        metadata=_in_dir("compilebackend", "inductor"))
    compile_scope: str | None = field(default=None,
                                      metadata=_in_dir("compilescope", "transformer"))
    # Inductor's coordinate-descent tuning: changes the kernels, so the run directory says so.
    compile_autotune: bool = field(default=False,
                                   metadata=_in_dir("autotune", False, text="coordesc"))
    # Inductor's compute/communication reordering: changes the schedule of the kernels.
    compile_overlap: bool = field(default=False, metadata=_in_dir("overlap", False, text="on"))
    use_fp8_t5_encoder: bool = field(default=False, metadata=_in_dir("fp8t5", False))
    # Fused QKV on its own; FP8 of the denoiser fuses as part of quantizing (and its run
    # directory says quantdenoiser-fp8, not both).
    fuse_qkv: bool = field(default=False, metadata=_in_dir("fuseqkv", False, text="on"))
    quantize_denoiser: str | None = field(default=None, metadata=_in_dir("quantdenoiser"))
    enable_sequential_cpu_offload: bool = field(default=False,
                                                metadata=_in_dir("offload", False))
    use_teacache: bool = field(default=False, metadata=_in_dir("cache", False, text="teacache"))
    use_fbcache: bool = field(default=False, metadata=_in_dir("cache", False, text="fbcache"))
    cache_threshold: float | None = field(
        default=None, metadata=_in_dir("cachethresh", DEFAULT_CACHE_THRESHOLD))
    attention_backend: str | None = field(default=None, metadata=_in_dir("attn"))
    # Not in `configurations`: derived, for the code that applies the options.
    compile_through_xdit: bool = field(default=False, metadata={"derived": True})

    @property
    def step_cache(self) -> str | None:
        return "teacache" if self.use_teacache else "fbcache" if self.use_fbcache else None

    def configurations(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.metadata.get("derived")}

    def dir_tokens(self) -> list[str]:
        """`token-value` parts of the run directory's name, for options off their defaults."""
        tokens = []
        for f in dataclasses.fields(self):
            if "dir" not in f.metadata:
                continue
            token, unchanged, text = f.metadata["dir"]
            value = getattr(self, f.name)
            if value in unchanged:
                continue
            tokens.append(f"{token}-{text or format_value(value)}")
        return tokens


def at_default(name: str, value) -> bool:
    """Whether a recorded `configurations` value leaves option `name` as it is by default: the
    run directory's name leaves it out (its field's `dir` metadata), and so do report labels."""
    metadata = {f.name: f.metadata for f in dataclasses.fields(Options)}[name]
    return value in metadata["dir"][1]


def format_value(value) -> str:
    """A value as it appears in a run directory's name: floats short where that is exact, never
    collapsing two values into one name."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def resolve(config: BenchmarkConfig, spec: ModelSpec, launch: Launch, dtype: str) -> Options:
    """Check the options against the model, the launch and the run's dtype, and decide every
    default."""
    _check_compile(config, spec, launch.device_type)
    _check_quantize_denoiser(config, launch, dtype)
    _check_caches(config, spec)
    _check_fuse_qkv(config, spec)
    _check_fp8_t5(config, spec)
    _check_offload(config, launch.device_type)
    _check_attention(config, launch)
    compiling = config.use_torch_compile
    scope = (config.compile_scope or "transformer") if compiling else None
    cached = config.use_teacache or config.use_fbcache
    return Options(
        use_torch_compile=compiling,
        compile_mode=(config.compile_mode or "default") if compiling else None,
        compile_backend=config.compile_backend if compiling else None,
        compile_scope=scope,
        compile_autotune=config.compile_autotune,
        compile_overlap=config.compile_overlap,
        use_fp8_t5_encoder=config.use_fp8_t5_encoder,
        fuse_qkv=config.fuse_qkv and config.quantize_denoiser is None,
        quantize_denoiser=config.quantize_denoiser,
        enable_sequential_cpu_offload=config.enable_sequential_cpu_offload,
        use_teacache=config.use_teacache,
        use_fbcache=config.use_fbcache,
        cache_threshold=(config.cache_threshold if config.cache_threshold is not None
                         else DEFAULT_CACHE_THRESHOLD) if cached else None,
        attention_backend=config.attention_backend,
        # xDiT compiles the whole denoiser forward itself, in the pipeline classes it has.
        compile_through_xdit=scope == "transformer" and spec.family.xfuser_pipeline is not None,
    )


def default_warmup_iters(config: BenchmarkConfig) -> int:
    """One warm-up iteration; two when compiling (the first compiles, the second must not)."""
    return 2 if config.use_torch_compile else 1


def repeated_blocks(spec: ModelSpec) -> tuple[str, ...]:
    """Class names of the denoiser's repeated blocks, as diffusers declares them for regional
    compilation; empty where it declares none."""
    import diffusers

    cls = getattr(diffusers, spec.family.components[spec.family.denoiser_slot].cls, None)
    return tuple(getattr(cls, "_repeated_blocks", None) or ())


# ---------------------------------------------------------------- checks (before loading)

def _check_compile(config: BenchmarkConfig, spec: ModelSpec, device_type: str) -> None:
    if not config.use_torch_compile:
        flag = ("--compile_mode" if config.compile_mode is not None
                else "--compile_backend" if config.compile_backend != "inductor"
                else "--compile_scope" if config.compile_scope is not None
                else "--compile_autotune" if config.compile_autotune
                else "--compile_overlap" if config.compile_overlap else None)
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
    _check_compile_mode(config, device_type)
    if config.compile_autotune and config.compile_backend != "inductor":
        raise ConfigError(f"--compile_autotune tunes inductor's kernels; drop it or use "
                          f"--compile_backend inductor (not {config.compile_backend})")
    if config.compile_overlap:
        if config.compile_backend != "inductor":
            raise ConfigError(f"--compile_overlap reorders inductor's kernels; drop it or use "
                              f"--compile_backend inductor (not {config.compile_backend})")
        if config.ulysses_degree * config.ring_degree == 1:
            raise ConfigError("--compile_overlap overlaps collectives with computation, and one "
                              "process has none: drop it or add --ulysses_degree / --ring_degree")
    if config.warmup_iters is not None and config.warmup_iters < 2:
        raise ConfigError(
            f"--use_torch_compile needs --warmup_iters 2 or more (got {config.warmup_iters}): "
            "the first warm-up iteration compiles, the second shows that nothing recompiles"
        )
    if (config.compile_backend == "inductor" and device_type != "cuda"
            and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))):
        raise ConfigError("inductor on CPU compiles C++ and no C++ compiler is on PATH; install "
                          "g++ or use --compile_backend aot_eager")


def _check_compile_mode(config: BenchmarkConfig, device_type: str) -> None:
    if config.compile_mode is None:
        return
    if config.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"unknown --compile_mode {config.compile_mode!r}; choose one of: "
                          + ", ".join(COMPILE_MODES))
    if config.compile_backend != "inductor":
        raise ConfigError(f"--compile_mode is an inductor setting; drop it or use "
                          f"--compile_backend inductor (not {config.compile_backend})")
    if config.compile_mode in CUDA_GRAPH_MODES and device_type != "cuda":
        raise ConfigError(f"--compile_mode {config.compile_mode} captures CUDA graphs and "
                          "needs a GPU; use max-autotune-no-cudagraphs or default")


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


def _check_fuse_qkv(config: BenchmarkConfig, spec: ModelSpec) -> None:
    if config.fuse_qkv and not spec.family.fuses_qkv:
        from mlenergy.diffusion.models.registry import FAMILIES

        fusing = ", ".join(name for name, family in FAMILIES.items() if family.fuses_qkv)
        raise ConfigError(f"--fuse_qkv: {spec.model_id} ({spec.family_name}) has no fused QKV "
                          f"projection in diffusers or xDiT (families with one: {fusing}); "
                          "drop the flag")


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


def _check_quantize_denoiser(config: BenchmarkConfig, launch: Launch, dtype: str) -> None:
    if config.quantize_denoiser is None:
        return
    from mlenergy.diffusion.kernels import quantize

    gpus = quantize.visible_gpus()
    if launch.device_type == "cuda" and not gpus:
        return  # planned here for GPUs elsewhere (a sweep): their run checks again
    reason = quantize.fp8_refusal(launch.device_type, dtype, gpus, quantize.installed_torchao())
    if reason is not None:
        raise ConfigError(reason)


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


def _check_attention(config: BenchmarkConfig, launch: Launch) -> None:
    name, device_type = config.attention_backend, launch.device_type
    if name is None:
        return
    backend = ATTENTION_BACKENDS.get(name)
    if backend is None:
        raise ConfigError(f"unknown --attention_backend {name!r}; choose one of: "
                          + ", ".join(ATTENTION_BACKENDS))
    if name == "fa3":
        _check_fa3(config, device_type)
        return
    if backend.needs_cuda and device_type != "cuda":
        on_cpu = ", ".join(n for n, b in ATTENTION_BACKENDS.items() if not b.needs_cuda)
        raise ConfigError(f"--attention_backend {name} needs a GPU; on CPU use {on_cpu}")
    if backend.needs_module and importlib.util.find_spec(backend.needs_module) is None:
        raise ConfigError(f"--attention_backend {name} needs the {backend.needs_module} package, "
                          "which is not installed; install it or choose another backend")


def _check_fa3(config: BenchmarkConfig, device_type: str) -> None:
    from mlenergy.diffusion.kernels import attention, quantize

    gpus = quantize.visible_gpus()
    if device_type == "cuda" and not gpus:
        # Planned here for GPUs elsewhere (a sweep): their run checks the GPUs and the wheel.
        reason = attention.fa3_refusal(device_type, [quantize.Gpu("planned", attention.HOPPER)],
                                       attention.FA3_VERSION, ring_degree=config.ring_degree)
    else:
        reason = attention.fa3_refusal(device_type, gpus, attention.installed_fa3(),
                                       ring_degree=config.ring_degree)
    if reason is not None:
        raise ConfigError(reason)
