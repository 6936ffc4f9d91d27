"""A torch.profiler look at a few denoising steps on this rank's GPU, with power sampled
meanwhile, summarised by `waiting` (communication, exposed communication and idle shares, and
power by activity).

Run it outside every measured window (it synchronizes at each step's edges, and the profiler
itself slows the host). Kineto stamps CPU and GPU events in wall-clock nanoseconds
(`time.time_ns`), so power samples taken with that clock line up with the kernels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import torch

from mlenergy.diffusion.profiling import waiting

STEP_MARK = "mlenergy_denoiser_step"


class _PowerSampler(threading.Thread):
    """Reads the GPU's instantaneous power (NVML field) as fast as the GIL lets it."""

    def __init__(self, device: torch.device, period_s: float):
        super().__init__(daemon=True)
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByUUID(
            uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        self._period = period_s
        self._halt = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def read_watts(self) -> float | None:
        nvml = self._nvml
        field = nvml.nvmlDeviceGetFieldValues(
            self._handle, [(nvml.NVML_FI_DEV_POWER_INSTANT, nvml.NVML_POWER_SCOPE_GPU)])[0]
        if field.nvmlReturn != self._nvml.NVML_SUCCESS:
            return None
        return field.value.uiVal / 1000.0

    def run(self) -> None:
        while not self._halt.is_set():
            watts = self.read_watts()
            if watts is not None:
                self.samples.append((time.time_ns() / 1e9, watts))
            time.sleep(self._period)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        return self.samples


def _mark_steps(denoiser: torch.nn.Module, device: torch.device):
    """A profiler range around every denoiser forward, with the GPU drained at both edges so
    that the range is the step's GPU time too."""
    open_ranges = []

    def before(module, args, kwargs):
        torch.cuda.synchronize(device)
        rng = torch.profiler.record_function(STEP_MARK)
        rng.__enter__()
        open_ranges.append(rng)

    def after(module, args, kwargs, output):
        torch.cuda.synchronize(device)
        open_ranges.pop().__exit__(None, None, None)

    return [denoiser.register_forward_pre_hook(before, with_kwargs=True),
            denoiser.register_forward_hook(after, with_kwargs=True)]


def named_spans_of(events) -> tuple[list[tuple[float, float, str]], list[waiting.Span]]:
    """(GPU kernels as (start, end, name), step windows), in seconds, from kineto events."""
    from torch.autograd import DeviceType

    kernels, windows = [], []
    for event in events:
        start = event.start_ns() / 1e9
        end = start + event.duration_ns() / 1e9
        if event.is_user_annotation():
            # Kineto mirrors every annotated range onto the GPU timeline (the step marks,
            # "nccl:all_to_all"): they are not GPU work, and a step mark there would cover the
            # whole step. The step windows are the CPU copies, drawn after a synchronize.
            if event.device_type() == DeviceType.CPU and event.name() == STEP_MARK:
                windows.append((start, end))
        elif event.device_type() == DeviceType.CUDA:
            kernels.append((start, end, event.name()))
    return kernels, sorted(windows)


def flag_collectives(named: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, bool]]:
    """(start, end, name) kernels as waiting.py takes them: (start, end, is_collective)."""
    return [(a, b, kernel_class(name) == "communication") for a, b, name in named]


# ---------------------------------------------------------------- kernels by what they do

KERNEL_CLASSES = ("matmul", "attention", "communication", "other")
# Substrings of kernel names, lower-cased. cuBLAS/cuBLASLt GEMMs show as sm90_xmma_*, nvjet_*,
# cutlass*, *gemm*; torchao's FP8 matmul is torch._scaled_mm (cuBLASLt, the same names).
# Attention: FlashAttention (flash_fwd*, fa3-fwd), cuDNN's fused attention (cudnn_generated_*
# sdpa / fmha), torch's memory-efficient kernel (fmha_cutlass*).
_ATTENTION = ("flash", "fmha", "sdpa", "attention", "attn_fwd")
_MATMUL = ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul", "scaled_mm", "wgmma")


def kernel_class(name: str) -> str:
    """matmul, attention, communication or other (inductor's fused pointwise and reduction
    kernels: norms, RoPE, modulation, activations, casts; copies and memsets)."""
    lowered = name.lower()
    if "nccl" in lowered:
        return "communication"
    if lowered.startswith("triton_"):
        # Inductor names its Triton matmul templates triton_tem_*mm*; every other Triton kernel
        # it generates is pointwise, a reduction, or a persistent reduction.
        return "matmul" if lowered.startswith("triton_tem") and "mm" in lowered else "other"
    if any(k in lowered for k in _ATTENTION):
        return "attention"
    if any(k in lowered for k in _MATMUL):
        return "matmul"
    return "other"


def kernel_breakdown(kernels: Sequence[tuple[float, float, str]],
                     windows: Sequence[waiting.Span], top: int = 15) -> dict:
    """Per profiled step: milliseconds each kernel class keeps the GPU busy (the union of its
    kernels inside the step, so overlapping streams are not counted twice) and its kernel count;
    and the kernels that take the most time, with their class."""
    if not windows:
        raise ValueError("no profiled steps")
    steps = len(windows)
    per_class: dict[str, dict] = {}
    for name in KERNEL_CLASSES:
        chosen = [(a, b) for a, b, n in kernels if kernel_class(n) == name]
        busy = sum(waiting.total(waiting.merge(waiting.clip(chosen, w))) for w in windows)
        count = sum(1 for a, b in chosen for lo, hi in windows if a < hi and b > lo)
        per_class[name] = {"ms_per_step": busy * 1e3 / steps, "kernels_per_step": count / steps}
    by_name: dict[str, list[float]] = {}
    for a, b, name in kernels:
        inside = sum(max(0.0, min(b, hi) - max(a, lo)) for lo, hi in windows)
        if inside > 0:
            by_name.setdefault(name, []).append(inside)
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    return {
        "by_class": per_class,
        "top_kernels": [{"name": name[:160], "class": kernel_class(name),
                         "ms_per_step": sum(times) * 1e3 / steps,
                         "calls_per_step": len(times) / steps} for name, times in ranked],
    }


def step_energy_j(samples: Sequence[tuple[float, float]],
                  windows: Sequence[waiting.Span]) -> float | None:
    """Mean energy of one profiled step: the mean of the power samples inside the steps times
    the mean step length; None without samples there."""
    inside = [watts for _, watts in waiting.samples_in(samples, windows)]
    if not inside or not windows:
        return None
    wall = sum(hi - lo for lo, hi in windows) / len(windows)
    return sum(inside) / len(inside) * wall


def profile_call(call: Callable[[], object], denoiser: torch.nn.Module, device: torch.device,
                 power_period_s: float = 0.002, skip_steps: int = 1) -> tuple[dict, str]:
    """Profile one pipeline call. Returns the summary (shares of each step: busy,
    communication, idle; milliseconds per kernel class and the top kernels; power by activity;
    energy per step and the part of it spent waiting) and the profiler's table of the most
    expensive kernels, as text. The first `skip_steps` steps are left out of the summary (the
    first can still allocate or warm)."""
    from torch.profiler import ProfilerActivity, profile

    hooks = _mark_steps(denoiser, device)
    sampler = _PowerSampler(device, power_period_s)
    try:
        sampler.start()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize(device)
    finally:
        samples = sampler.stop()
        for hook in hooks:
            hook.remove()
    named, windows = named_spans_of(prof.profiler.kineto_results.events())
    kernels = flag_collectives(named)
    windows = windows[skip_steps:] or windows
    steps = [waiting.step_activity(kernels, w) for w in windows]
    summary = waiting.activity_summary(steps)
    summary.update(kernel_breakdown(named, windows))
    summary["power_by_activity"] = waiting.power_by_activity(samples, kernels, windows)
    summary["power_samples_in_steps"] = len(waiting.samples_in(samples, windows))
    summary["energy_per_step_j"] = step_energy_j(samples, windows)
    summary.update(waiting.waiting_energy(summary, summary["energy_per_step_j"],
                                          summary["power_by_activity"]))
    try:
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=25,
                                          max_name_column_width=70)
    except Exception as err:  # the table is a reading aid; the summary is the result
        table = f"no kernel table: {err!r}"
    return summary, table
