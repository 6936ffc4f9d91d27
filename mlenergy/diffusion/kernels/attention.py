"""FlashAttention-3 from the `fa3-fwd` wheel (`--attention_backend fa3`), and the name of the
kernel a run's attention ran on.

The wheel (the `fa3` extra) ships FlashAttention-3's forward kernels for Hopper as the module
`fa3_fwd_interface`: the same `flash_attn_func(q, k, v, softmax_scale=, causal=,
return_attn_probs=)` as FlashAttention-3's own `flash_attn_interface`, (batch, tokens, heads,
head dim) layout, bfloat16 (its fp16 kernels are left out), head dims up to 256. Nothing here
imports it until a run asks for it.

Both callers that know FlashAttention-3 look it up by that interface: diffusers' `_flash_3`
attention backend (one process) and xDiT's FLASH_3 attention function (Ulysses). Each reads a
module-level name that it fills only when `flash_attn_interface` itself imports, so
`install_fa3` points those names at the wheel's function. Ring attention goes through
yunchang's own FlashAttention-3 import instead, so fa3 is refused with ring degrees above 1.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging

logger = logging.getLogger("mlenergy.diffusion")

FA3_DISTRIBUTION = "fa3-fwd"
FA3_VERSION = "0.0.3"
FA3_MODULE = "fa3_fwd_interface"
FA3_INSTALL_HINT = "pip install 'mlenergy-diffusion-benchmark[fa3]'"
HOPPER = (9, 0)
# What install_fa3 did in this process (it changes process-wide names), for the report.
_installed: dict | None = None

# What runs the attention, for results.json `attention.kernel`, by the backend the run used.
KERNELS = {
    "fa3": f"FlashAttention-3 forward ({FA3_DISTRIBUTION} wheel, {FA3_MODULE}.flash_attn_func)",
    "flash_3": "FlashAttention-3 (flash_attn_interface.flash_attn_func)",
    "flash": "FlashAttention-2 (flash_attn.flash_attn_func)",
    "cudnn": "cuDNN attention (torch SDPA's cuDNN kernel)",
    "sdpa_flash": "torch SDPA's FlashAttention-2 kernel",
    "sdpa_efficient": "torch SDPA's memory-efficient kernel",
    "sdpa_math": "torch SDPA's math (unfused) path",
    "sdpa": "torch SDPA, kernel chosen by torch per call (cuDNN or FlashAttention-2 on Hopper)",
}
# xDiT's own choice when no backend is asked for, by its AttentionBackendType name.
XFUSER_KERNELS = {"CUDNN": KERNELS["cudnn"], "SDPA": KERNELS["sdpa"],
                  "FLASH": KERNELS["flash"], "FLASH_3": KERNELS["flash_3"]}


def installed_fa3() -> str | None:
    """The installed fa3-fwd version, or None when the wheel (its module) is missing."""
    if importlib.util.find_spec(FA3_MODULE) is None:
        return None
    try:
        return importlib.metadata.version(FA3_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def fa3_refusal(device_type: str, gpus: list, fa3_version: str | None,
                ring_degree: int = 1) -> str | None:
    """Every reason `--attention_backend fa3` cannot run here, in one line; None when it can.
    `gpus` are quantize.Gpu values (name, compute capability)."""
    reasons = []
    if device_type != "cuda" or not gpus:
        reasons.append("needs a Hopper GPU (compute capability 9.0: H100, H200, H20) and this "
                       "run has none")
    else:
        for index, gpu in enumerate(gpus):
            if tuple(gpu.capability) != HOPPER:
                major, minor = gpu.capability
                reasons.append(f"runs on Hopper GPUs only (compute capability 9.0); GPU {index} "
                               f"({gpu.name}) has {major}.{minor}")
                break
    if fa3_version is None:
        reasons.append(f"needs the {FA3_DISTRIBUTION} {FA3_VERSION} wheel, which is not "
                       f"installed: {FA3_INSTALL_HINT}")
    elif fa3_version != FA3_VERSION:
        reasons.append(f"is checked with {FA3_DISTRIBUTION} {FA3_VERSION}, but {fa3_version} "
                       f"is installed: {FA3_INSTALL_HINT}")
    if ring_degree > 1:
        reasons.append("reaches xDiT's Ulysses attention but not ring attention (yunchang's own "
                       "kernels): use --ring_degree 1")
    if not reasons:
        return None
    return "--attention_backend fa3 " + "; it also ".join(reasons) \
        + "; or choose another --attention_backend"


def install_fa3() -> dict:
    """Point diffusers' `_flash_3` backend and xDiT's FLASH_3 attention function at the wheel's
    kernel, then check it once against torch's SDPA on a small input on this GPU. Returns what
    results.json `attention.fa3` records."""
    import torch
    from diffusers.models import attention_dispatch

    fa3 = importlib.import_module(FA3_MODULE)
    attention_dispatch.flash_attn_3_func = fa3.flash_attn_func
    attention_dispatch.flash_attn_3_varlen_func = fa3.flash_attn_varlen_func
    attention_dispatch._CAN_USE_FLASH_ATTN_3 = True
    from mlenergy.diffusion.process.xfuser_compat import import_xfuser

    import_xfuser()
    xfuser_attention = importlib.import_module("xfuser.core.distributed.attention_backend")
    xfuser_attention.flash_attn_func_3 = fa3.flash_attn_func
    xfuser_attention.flash_attn_varlen_func_3 = fa3.flash_attn_varlen_func
    difference = self_check(fa3.flash_attn_func, torch.device("cuda"))
    logger.info("FlashAttention-3 (%s %s): max difference from torch SDPA %.2e on a test input",
                FA3_DISTRIBUTION, installed_fa3(), difference)
    global _installed
    _installed = {"package": f"{FA3_DISTRIBUTION} {installed_fa3()}", "module": FA3_MODULE,
                  "self_check_max_abs_difference": difference}
    return _installed


def installed_report() -> dict | None:
    """What `install_fa3` recorded in this process; None when it did not run."""
    return _installed


def self_check(flash_attn_func, device, heads: int = 4, tokens: int = 256,
               head_dim: int = 128) -> float:
    """Largest absolute difference between the kernel and torch's SDPA on one random bf16
    input (batch, tokens, heads, head dim); raises if the kernel cannot run on this GPU."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, tokens, heads, head_dim, device=device, dtype=torch.bfloat16,
                           generator=generator) for _ in range(3))
    with torch.no_grad():
        ours = flash_attn_func(q, k, v)
        ours = ours[0] if isinstance(ours, tuple) else ours
        theirs = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    difference = float((ours.float() - theirs.float()).abs().max())
    if not difference < 0.05:
        raise RuntimeError(f"FlashAttention-3 from {FA3_DISTRIBUTION} differs from torch SDPA "
                           f"by {difference} on a test input: not using it")
    return difference


def kernel_name(requested: str | None, used: str) -> str:
    """What ran the attention, in words, from the backend asked for and the one reported used
    (`xfuser:NAME` or `diffusers:NAME`)."""
    if requested is not None:
        return KERNELS.get(requested, requested)
    where, _, name = used.partition(":")
    if where == "xfuser":
        return XFUSER_KERNELS.get(name, f"xDiT {name}")
    return KERNELS["sdpa"] if name == "native" else f"diffusers {name}"
