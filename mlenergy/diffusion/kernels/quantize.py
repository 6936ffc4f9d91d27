"""FP8 weights and activations for the denoiser's linear layers (torchao), and fused QKV
projections.

Scheme: torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`. Each weight
is stored in float8 e4m3 with one scale per output row; each activation is quantized to float8
with one scale per row (token) at every call, and the product runs on the GPU's FP8 tensor cores
(`torch._scaled_mm`). That needs compute capability 8.9 or newer (Ada: L4, L40S; Hopper: H100,
H200; Blackwell). torchao refuses anything else itself, so `fp8_refusal` says so in one line
before any model is loaded.

Order matters: fuse QKV first (so the fused projection is quantized once, one activation
quantization instead of three), then quantize, then compile.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger("mlenergy.diffusion")

# The version checked on H100 with torch 2.11 (docs/benchmarks.md); quantize_'s configs and the
# tensor subclass it installs change between torchao releases, so the benchmark pins it.
TORCHAO_VERSION = "0.18.0"
MIN_CAPABILITY = (8, 9)
INSTALL_HINT = "pip install 'mlenergy-diffusion-benchmark[fp8-denoiser]'"
SCHEME = "float8_e4m3fn weights and dynamic activations, one scale per row (torchao)"
# The smallest largest-magnitude an activation row's scale is taken from. torchao divides each
# row by max|row| / 448 and, unless given a floor, a row of zeros becomes 0/0 = NaN, which then
# spreads through attention to every token: Wan pads its text tokens with zeros, and on an H200
# its FP8 denoiser decoded NaN videos (docs/benchmarks.md). With the floor a zero row quantizes
# to zeros; any row with a value above 1e-12 keeps its own scale, so no real row changes.
ACTIVATION_SCALE_FLOOR = 1e-12


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]


def visible_gpus() -> list[Gpu]:
    """Name and compute capability of every GPU this process sees (nothing is allocated)."""
    if not torch.cuda.is_available():
        return []
    return [Gpu(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
            for i in range(torch.cuda.device_count())]


def installed_torchao() -> str | None:
    try:
        return importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return None


def fp8_refusal(device_type: str, dtype: str, gpus: list[Gpu],
                torchao_version: str | None) -> str | None:
    """Why FP8 of the denoiser cannot run with these facts, in one line; None when it can."""
    flag = "--quantize_denoiser fp8"
    if device_type != "cuda" or not gpus:
        return (f"{flag} needs NVIDIA GPUs with FP8 tensor cores (compute capability 8.9 or "
                "newer: L4, L40S, H100, H200, B200); this run has no GPU: drop the flag")
    for index, gpu in enumerate(gpus):
        if tuple(gpu.capability) < MIN_CAPABILITY:
            major, minor = gpu.capability
            return (f"{flag} needs FP8 tensor cores (compute capability 8.9 or newer); GPU "
                    f"{index} ({gpu.name}) has {major}.{minor}: drop the flag or use an Ada, "
                    "Hopper or Blackwell GPU")
    if dtype != "bfloat16":
        return (f"{flag} quantizes bfloat16 weights (row-wise scales); this run uses {dtype}: "
                "use --workload.dtype bfloat16 or drop the flag")
    if torchao_version is None:
        return f"{flag} needs torchao {TORCHAO_VERSION}, which is not installed: {INSTALL_HINT}"
    if torchao_version != TORCHAO_VERSION:
        return (f"{flag} is checked with torchao {TORCHAO_VERSION}, but {torchao_version} is "
                f"installed: {INSTALL_HINT}")
    return None


def check_fp8(device_type: str, dtype: str) -> str | None:
    """`fp8_refusal` for this machine and environment (cheap: run it before loading)."""
    return fp8_refusal(device_type, dtype, visible_gpus(), installed_torchao())


# ---------------------------------------------------------------- bytes

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


# ---------------------------------------------------------------- fused QKV

def fuse_qkv(denoiser: torch.nn.Module) -> int:
    """Fuse each attention layer's query, key and value projections into one linear layer
    (diffusers' `fuse_projections`), then drop the separate ones, which nothing calls any
    more and which would otherwise stay in GPU memory (and be quantized for nothing).
    Returns how many attention layers are fused (a second call changes nothing); 0 where the
    model has no fusion."""
    from diffusers.models.attention import AttentionModuleMixin

    attentions = [m for m in denoiser.modules() if isinstance(m, AttentionModuleMixin)]
    fused = 0
    for attention in attentions:
        if not getattr(attention, "_supports_qkv_fusion", False):
            continue
        attention.fuse_projections()
        if not getattr(attention, "fused_projections", False):
            continue
        fused += 1
        separate = ["to_q", "to_k", "to_v"] if hasattr(attention, "to_qkv") else []
        if hasattr(attention, "to_added_qkv"):
            separate += ["add_q_proj", "add_k_proj", "add_v_proj"]
        for name in separate:
            if hasattr(attention, name):
                delattr(attention, name)
    return fused


# ---------------------------------------------------------------- FP8

def _is_fp8_weight(weight: torch.Tensor) -> bool:
    # torchao's tensor subclass keeps the original dtype as its reported dtype; look at the
    # payload it stores.
    flatten = getattr(weight, "__tensor_flatten__", None)
    if flatten is None or type(weight) in (torch.Tensor, torch.nn.Parameter):
        return False
    names, _ = flatten()
    return any(getattr(weight, n).dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
               for n in names)


def linear_layers(module: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def fp8_summary(module: torch.nn.Module, bytes_before: int, seconds: float) -> dict:
    """results.json block for an FP8 denoiser: what was quantized and the bytes it saved."""
    linears = linear_layers(module)
    kept = sorted(name for name, m in linears.items() if not _is_fp8_weight(m.weight))
    return {
        "scheme": SCHEME,
        "activation_scale_floor": ACTIVATION_SCALE_FLOOR,
        "library": f"torchao {installed_torchao()}",
        "linear_layers": len(linears),
        "fp8_linear_layers": len(linears) - len(kept),
        # torchao leaves layers whose sizes the FP8 matmul cannot take (not multiples of 16).
        "bf16_linear_layers": kept,
        "bytes_before": bytes_before,
        "bytes_after": module_bytes(module),
        "seconds": seconds,
    }


def fp8_config():
    """torchao's config for SCHEME, zero rows floored (ACTIVATION_SCALE_FLOOR).
    `set_inductor_config=False`: torchao's default would turn on
    inductor's coordinate-descent tuning (in all directions) for the whole process, which on
    FLUX.1-dev bought 2% of speed for 80-250 s of tuning at every run's first call, warm kernel
    cache or not (docs/benchmarks.md). `--compile_autotune` asks for it instead."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(),
                                                     set_inductor_config=False,
                                                     activation_value_lb=ACTIVATION_SCALE_FLOOR)


def quantize_fp8(denoiser: torch.nn.Module) -> dict:
    """Quantize every linear layer of the denoiser in place (weights now, activations at each
    call). Call on the GPU-resident model, after xDiT has wrapped it and before compiling.
    Returns `fp8_summary`."""
    from torchao.quantization import quantize_

    before = module_bytes(denoiser)
    started = time.perf_counter()
    quantize_(denoiser, fp8_config())
    summary = fp8_summary(denoiser, before, time.perf_counter() - started)
    logger.info("Denoiser in FP8: %d of %d linear layers, %.2f GB -> %.2f GB of weights (%.1f s)",
                summary["fp8_linear_layers"], summary["linear_layers"],
                summary["bytes_before"] / 1e9, summary["bytes_after"] / 1e9, summary["seconds"])
    return summary
