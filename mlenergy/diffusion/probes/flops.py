"""The physical floor: floating-point work of one denoiser forward, and what the run made of it.

The count runs the run's own denoiser once, on the inputs of its first call of an iteration,
under torch's FlopCounterMode, on every rank (sequence parallelism splits the work; the ranks'
counts add up to the forward). FlopCounterMode does not know every attention kernel (the CPU
flash kernel, flash-attn's op); those are taught here, so attention is always counted. FLUX also
has an analytic count to cross-check it (field notes 6: 74.4 TFLOP at 1024x1024).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mlenergy.diffusion.probes.protocol import MeasuredPhase
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results.sections import Section

logger = logging.getLogger("mlenergy.diffusion")

# Dense bf16/fp16 tensor-core peaks (TFLOP/s), by a substring of the NVML name; the first match
# wins, so more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),  # fp16 only
)


def peak_tflops(gpu_name: str | None, dtype: str) -> float | None:
    """The dense peak for bfloat16/float16 runs; None for float32 (no tensor-core peak applies)
    and for GPUs not in the table."""
    if not gpu_name or dtype not in ("bfloat16", "float16"):
        return None
    for key, peak in PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return peak
    return None


def _attention_flops(q_shape, k_shape, v_shape, heads_dim: int = 1) -> int:
    """4 * batch * heads * q_len * k_len * head_dim (QK^T and AV); heads at `heads_dim`."""
    if heads_dim == 1:  # (batch, heads, seq, dim)
        b, h, sq, d = q_shape
        sk, dv = k_shape[2], v_shape[3]
    else:  # (batch, seq, heads, dim), flash-attn's layout
        b, sq, h, d = q_shape
        sk, dv = k_shape[1], v_shape[3]
    return 2 * b * h * sq * sk * d + 2 * b * h * sq * sk * dv


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query_shape, key_shape, value_shape, heads_dim=1)


def _flash_attn_formula(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(q_shape, k_shape, v_shape, heads_dim=2)


def attention_formulas() -> dict:
    """Formulas for the attention ops FlopCounterMode leaves uncounted, where they exist."""
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_formula
    # flash-attn 2 and 3 register their kernels as torch ops once imported, layout
    # (batch, seq, heads, dim); so do diffusers' FlashAttention-3 wrapper (what one process
    # calls with flash_3 / fa3: the counter sees that outer op only) and the fa3-fwd wheel (what
    # xDiT's FLASH_3 reaches).
    for namespace, name in (("flash_attn", "_flash_attn_forward"), ("flash_attn_3", "fwd"),
                            ("_diffusers_flash_attn_3", "_flash_attn_forward"),
                            ("fa3_fwd", "_flash_attn_forward")):
        try:
            mapping[getattr(getattr(torch.ops, namespace), name)] = _flash_attn_formula
        except (AttributeError, RuntimeError):
            pass
    return mapping


def count_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """FLOPs of one forward of `module` on these inputs, on this rank: total, in attention, and
    by operator. The class's forward is called, not the instance's: that skips hooks and a
    compiled forward (compilation under a dispatch mode would retrace)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=attention_formulas())
    with torch.no_grad(), counter:
        type(module).forward(module, *args, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    attention = sum(n for op, n in by_op.items() if "attention" in op or "attn" in op)
    return {"total": int(counter.get_total_flops()), "attention": attention, "by_op": by_op}


def count_on_every_rank(captured: tuple | None, ranks, fail_softly: bool) -> list[dict] | None:
    """Every rank counts its part of one forward together (sequence parallelism splits it across
    them); rank 0 gets each rank's count. `captured` is (module, args, kwargs) of a denoiser call.
    With one process a failed count is logged and skipped; with several it ends the run, since
    the other ranks would otherwise wait inside the forward."""
    if not all(runtime.all_gather_object(captured is not None)):
        return None
    module, args, kwargs = captured
    runtime.synchronize(ranks.device)
    runtime.barrier()
    try:
        count = count_forward(module, args, kwargs)
    except Exception as err:  # noqa: BLE001
        if not fail_softly:
            raise
        logger.warning("FLOP count failed (%s: %s); the floor is not reported",
                       type(err).__name__, err)
        return None
    return runtime.all_gather_object(count)


def flux_forward_flops(config, height: int, width: int, text_tokens: int, batch: int) -> dict:
    """Hand count of a FLUX transformer forward: every linear layer 2*m*n*k, attention
    4*seq^2*dim per head set. `config` is the transformer's config (a mapping)."""
    c = dict(config)
    d = c["num_attention_heads"] * c["attention_head_dim"]
    patch = c.get("patch_size", 1)
    out_channels = c.get("out_channels") or c["in_channels"]
    image_tokens = (height // 16) * (width // 16)
    seq = image_tokens + text_tokens
    double, single = c["num_layers"], c["num_single_layers"]

    def linear(tokens: int, fan_in: int, fan_out: int) -> int:
        return 2 * tokens * fan_in * fan_out

    # Per sample: timestep, guidance and pooled-text embedders, and the modulation linears.
    per_sample = linear(1, 256, d) + linear(1, d, d)
    if c.get("guidance_embeds"):
        per_sample += linear(1, 256, d) + linear(1, d, d)
    per_sample += linear(1, c["pooled_projection_dim"], d) + linear(1, d, d)
    per_sample += double * 2 * linear(1, d, 6 * d) + single * linear(1, d, 3 * d)
    per_sample += linear(1, d, 2 * d)
    # Per token: embedders, the blocks' projections and MLPs, the output projection.
    tokens = linear(image_tokens, c["in_channels"], d)
    tokens += linear(text_tokens, c["joint_attention_dim"], d)
    tokens += double * (linear(image_tokens, d, 12 * d) + linear(text_tokens, d, 12 * d))
    tokens += single * linear(seq, d, 12 * d)
    tokens += linear(image_tokens, d, patch * patch * out_channels)
    attention = (double + single) * 4 * seq * seq * d
    linear_total = batch * (per_sample + tokens)
    # Sequence parallelism splits tokens, not samples: every rank repeats the per-sample part.
    return {"linear": linear_total, "attention": batch * attention,
            "total": linear_total + batch * attention, "per_sample": batch * per_sample}


def analytic_forward_flops(family: str, denoiser, height: int, width: int, text_tokens: int | None,
                           batch: int) -> dict | None:
    """The hand count where one exists (FLUX); None for other families."""
    config = getattr(denoiser, "config", None)
    if family != "flux" or config is None or text_tokens is None:
        return None
    try:
        return flux_forward_flops(config, height, width, text_tokens, batch)
    except (KeyError, TypeError):
        return None


def floor(*, flops_per_forward: float, forwards_per_iteration: float, denoising_time_s: float,
          denoising_energy_j: float | None, iteration_time_s: float,
          iteration_energy_j: float | None, num_gpus: int, peak_tflops_per_gpu: float | None) -> dict:
    """Achieved throughput, utilisation against the peak, joules per TFLOP, and the time and
    energy the work would take at the peak, at the power the run drew while denoising."""
    work = flops_per_forward * forwards_per_iteration
    tflop = work / 1e12
    achieved = tflop / denoising_time_s if denoising_time_s > 0 else None
    peak = peak_tflops_per_gpu * num_gpus if peak_tflops_per_gpu and num_gpus else None
    if denoising_energy_j is not None and denoising_time_s > 0:
        power, basis = denoising_energy_j / denoising_time_s, "denoising"
    elif iteration_energy_j is not None:
        power, basis = iteration_energy_j / iteration_time_s, "iteration"
    else:
        power, basis = None, None
    time_floor = tflop / peak if peak else None
    energy = denoising_energy_j if denoising_energy_j is not None else iteration_energy_j
    return {
        "flops_per_forward": flops_per_forward,
        "forwards_per_iteration": forwards_per_iteration,
        "tflop_per_iteration": tflop,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if achieved is not None and peak else None,
        "joules_per_tflop": energy / tflop if energy is not None and tflop > 0 else None,
        "power_basis": basis,
        "time_floor_s": time_floor,
        "energy_floor_j": time_floor * power if time_floor is not None and power else None,
        "denoising_time_over_floor": denoising_time_s / time_floor if time_floor else None,
    }


@dataclass
class PhysicalFloor(Section):
    """results.json `physical_floor`: the work of the run's denoiser and what the run made of it
    (floor() for the first eleven entries)."""

    flops_per_forward: float
    forwards_per_iteration: float
    tflop_per_iteration: float
    achieved_tflops: float | None
    peak_tflops: float | None
    mfu: float | None
    joules_per_tflop: float | None
    power_basis: str | None
    time_floor_s: float | None
    energy_floor_j: float | None
    denoising_time_over_floor: float | None
    attention_flops_per_forward: int
    counted_on_ranks: int
    method: str
    flops_by_operator: dict[str, int]
    analytic_flops_per_forward: int | None
    counted_over_analytic: float | None


@dataclass
class FlopCount:
    """One denoiser forward counted on every rank, and the hand count where one exists."""

    per_rank: list[dict]
    analytic: dict | None

    def floor(self, *, forwards_per_iteration: float, denoising, phase: MeasuredPhase,
              num_gpus: int, gpu_model: str, dtype: str) -> PhysicalFloor:
        """The floor of the measured phase; `denoising` is its mean denoising stage."""
        total = sum(c["total"] for c in self.per_rank)
        attention = sum(c["attention"] for c in self.per_rank)
        if attention == 0:
            logger.warning("FLOP count: no attention operator was counted; the floor is too low")
        times, energies = phase.iteration_times, phase.iteration_energies
        arithmetic = floor(
            flops_per_forward=total, forwards_per_iteration=forwards_per_iteration,
            denoising_time_s=denoising.time_s, denoising_energy_j=denoising.energy_j,
            iteration_time_s=sum(times) / len(times),
            iteration_energy_j=None if None in energies else sum(energies) / len(energies),
            num_gpus=num_gpus, peak_tflops_per_gpu=peak_tflops(gpu_model, dtype))
        by_operator: dict[str, int] = {}
        for count in self.per_rank:
            for op, n in count["by_op"].items():
                by_operator[op] = by_operator.get(op, 0) + n
        analytic = self.analytic["total"] if self.analytic else None
        return PhysicalFloor(
            **arithmetic, attention_flops_per_forward=attention,
            counted_on_ranks=len(self.per_rank),
            method="torch.utils.flop_counter.FlopCounterMode on the run's denoiser",
            flops_by_operator=by_operator, analytic_flops_per_forward=analytic,
            counted_over_analytic=total / analytic if analytic else None)


class FlopsProbe:
    """Counts one denoiser forward after the measured phase, on the inputs of the last measured
    iteration's first denoiser call (captured by the stage hooks)."""

    def __init__(self, plan, recorder):
        self.plan = plan
        self.recorder = recorder

    def begin_iteration(self, measured: bool) -> None:
        pass

    def end_iteration(self, measured: bool) -> None:
        pass

    def gather(self, phase: MeasuredPhase) -> FlopCount | None:
        plan = self.plan
        if not plan.count_flops:
            return None
        captured = self.recorder.first_denoiser_call
        per_rank = count_on_every_rank(captured, self.recorder.ranks,
                                       fail_softly=plan.world_size == 1)
        if not per_rank:
            return None
        denoiser = captured[0]
        return FlopCount(per_rank, analytic_forward_flops(
            plan.spec.family.name, denoiser, plan.height, plan.width, plan.max_sequence_length,
            plan.batch_size))
