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
from collections.abc import Callable

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


def spans_of(events) -> tuple[list[tuple[float, float, bool]], list[waiting.Span]]:
    """(GPU kernels as (start, end, is_collective), step windows), in seconds, from kineto
    events."""
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
            kernels.append((start, end, "nccl" in event.name().lower()))
    return kernels, sorted(windows)


def profile_call(call: Callable[[], object], denoiser: torch.nn.Module, device: torch.device,
                 power_period_s: float = 0.002, skip_steps: int = 1) -> tuple[dict, str]:
    """Profile one pipeline call. Returns the summary (shares, power by activity, kernel
    counts) and the profiler's table of the most expensive kernels, as text. The first
    `skip_steps` steps are left out of the summary (the first can still allocate or warm)."""
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
    kernels, windows = spans_of(prof.profiler.kineto_results.events())
    windows = windows[skip_steps:] or windows
    steps = [waiting.step_activity(kernels, w) for w in windows]
    summary = waiting.activity_summary(steps)
    summary["power_by_activity"] = waiting.power_by_activity(samples, kernels, windows)
    summary["power_samples_in_steps"] = sum(
        1 for t, _ in samples if any(a <= t < b for a, b in windows))
    try:
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=25,
                                          max_name_column_width=70)
    except Exception as err:  # the table is a reading aid; the summary is the result
        table = f"no kernel table: {err!r}"
    return summary, table
