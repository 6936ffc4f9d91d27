"""The energy of waiting: how much of each GPU's denoising time goes to communication and to
idling, and what the GPU draws meanwhile.

Input is a kernel timeline of a few denoising steps on one GPU (from torch.profiler: each kernel's
start and end, and whether it is a collective), the steps' windows on the same clock, and
optionally power samples on that clock. Everything here is arithmetic on intervals, so it is the
same for any source of the timeline.

Per step:
- busy: time with any kernel running; idle = wall - busy (launch gaps, host work, waiting for
  the host to enqueue);
- communication: time with a collective kernel running; exposed communication: the part of it
  with no compute kernel running at the same time (what overlap could still hide; an NCCL
  kernel that waits for a slower peer counts here too);
- waiting = exposed communication + idle: time the GPU spends not computing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

Span = tuple[float, float]


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-overlapping union of the spans."""
    merged: list[list[float]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def total(spans: Sequence[Span]) -> float:
    return sum(b - a for a, b in spans)


def clip(spans: Sequence[Span], window: Span) -> list[Span]:
    lo, hi = window
    return [(max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi]


def subtract(spans: Sequence[Span], holes: Sequence[Span]) -> list[Span]:
    """Parts of merged `spans` outside merged `holes`."""
    out: list[Span] = []
    j = 0
    for a, b in spans:
        while j < len(holes) and holes[j][1] <= a:
            j += 1
        k, start = j, a
        while k < len(holes) and holes[k][0] < b:
            if holes[k][0] > start:
                out.append((start, holes[k][0]))
            start = max(start, holes[k][1])
            k += 1
        if start < b:
            out.append((start, b))
    return out


def step_activity(kernels: Sequence[tuple[float, float, bool]], window: Span) -> dict:
    """Seconds of one step's window spent busy, communicating (exposed or hidden) and idle.
    `kernels`: (start, end, is_collective), on the window's clock, in seconds."""
    compute = merge(clip([(a, b) for a, b, comm in kernels if not comm], window))
    collective = merge(clip([(a, b) for a, b, comm in kernels if comm], window))
    busy = merge([*compute, *collective])
    wall = window[1] - window[0]
    exposed = total(subtract(collective, compute))
    return {
        "wall_s": wall,
        "busy_s": total(busy),
        "compute_s": total(compute),
        "communication_s": total(collective),
        "exposed_communication_s": exposed,
        "idle_s": wall - total(busy),
        "collective_kernels": sum(1 for a, b, comm in kernels
                                  if comm and a < window[1] and b > window[0]),
    }


def activity_summary(steps: Sequence[dict]) -> dict:
    """Per-step means and shares of the wall time over the profiled steps."""
    if not steps:
        raise ValueError("no profiled steps")
    keys = [k for k in steps[0] if k.endswith("_s")] + ["collective_kernels"]
    mean = {k: sum(s[k] for s in steps) / len(steps) for k in keys}
    wall = mean["wall_s"]
    waiting = mean["exposed_communication_s"] + mean["idle_s"]
    return {
        "steps": len(steps),
        "per_step": mean,
        "communication_share": mean["communication_s"] / wall,
        "exposed_communication_share": mean["exposed_communication_s"] / wall,
        "idle_share": mean["idle_s"] / wall,
        "waiting_share": waiting / wall,
    }


def covers(spans: Sequence[Span], starts: Sequence[float], t: float) -> bool:
    """Whether merged, sorted `spans` (their starts in `starts`) cover time t: a binary search,
    since a profile of long video steps holds tens of thousands of kernels and power samples."""
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and t < spans[i][1]


def samples_in(samples: Sequence[tuple[float, float]],
               windows: Sequence[Span]) -> list[tuple[float, float]]:
    """The (time, watts) samples that fall inside the windows (each half-open: start <= t <
    end), by binary search."""
    spans = merge(windows)
    starts = [a for a, _ in spans]
    return [(t, watts) for t, watts in samples if covers(spans, starts, t)]


def power_by_activity(samples: Sequence[tuple[float, float]],
                      kernels: Sequence[tuple[float, float, bool]],
                      windows: Sequence[Span]) -> dict:
    """Mean power of the samples that fall while the GPU computes, only communicates, or idles
    (inside the steps' windows). Meaningful only when the power readings resolve times shorter
    than a kernel; each class reports its sample count so a reader can judge."""
    compute = merge([(a, b) for a, b, comm in kernels if not comm])
    collective = merge([(a, b) for a, b, comm in kernels if comm])
    compute_starts, collective_starts = [a for a, _ in compute], [a for a, _ in collective]
    groups: dict[str, list[float]] = {"compute": [], "exposed_communication": [], "idle": []}
    for t, watts in samples_in(samples, windows):
        activity = ("compute" if covers(compute, compute_starts, t)
                    else "exposed_communication" if covers(collective, collective_starts, t)
                    else "idle")
        groups[activity].append(watts)
    return {name: {"samples": len(values),
                   "mean_w": sum(values) / len(values) if values else None}
            for name, values in groups.items()}


def waiting_energy(summary: dict, denoising_energy_j: float | None,
                   power: dict | None = None) -> dict:
    """Joules of the denoising energy spent waiting. With per-activity power, time x power of
    each class; otherwise the waiting share of the energy (power taken as uniform over the
    step: an upper bound when waiting draws less than computing)."""
    if denoising_energy_j is None:
        return {"waiting_energy_j": None, "method": "energy not measured"}
    share = summary["waiting_share"]
    if power and all(power[k]["mean_w"] is not None for k in power):
        per_step = summary["per_step"]
        # compute, exposed communication and idle partition the step's wall time.
        waiting_j = sum(per_step[f"{k}_s"] * power[k]["mean_w"]
                        for k in ("exposed_communication", "idle"))
        whole_j = per_step["compute_s"] * power["compute"]["mean_w"] + waiting_j
        return {"waiting_energy_j": denoising_energy_j * waiting_j / whole_j,
                "method": "time x power of each activity"}
    return {"waiting_energy_j": denoising_energy_j * share,
            "method": "waiting share of the energy (uniform power)"}


def in_measured_windows(profile: dict, denoising_s: float, denoising_energy_j: float | None,
                        measured_step_s: float) -> dict:
    """One rank's waiting inside the measured windows: the profiled call's shares (of time, and
    of energy where its energy was sampled) applied to the denoising stage of the measured
    iterations (mean per iteration, this rank's GPU). The profiled step's wall over the
    measured step says how far the profiler itself stretched the step it split: the further
    from 1, the less the shares are the measured run's."""
    profiled_step_s = profile["per_step"]["wall_s"]
    energy_share = None
    if profile["energy_per_step_j"] and profile["waiting_energy_j"] is not None:
        energy_share = profile["waiting_energy_j"] / profile["energy_per_step_j"]
    measured = denoising_energy_j is not None and energy_share is not None
    return {
        "denoising_s": denoising_s,
        "denoising_energy_j": denoising_energy_j,
        "waiting_s": denoising_s * profile["waiting_share"],
        "waiting_energy_j": denoising_energy_j * energy_share if measured else None,
        "profiled_over_measured_step": profiled_step_s / measured_step_s,
        "method": (f"profiled shares x measured denoising stage (energy: {profile['method']})"
                   if measured else
                  ("energy not measured" if denoising_energy_j is None
                   else "energy of the profiled call not sampled")),
    }
