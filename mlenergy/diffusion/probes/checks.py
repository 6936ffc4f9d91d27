"""Checks that make a GPU measurement trustworthy: nobody else on the GPUs, an independent read of
NVML's energy counter, and agreement between the counter and the power timeline.

Devices are read through the run's `RunGpus` (probes/gpus.py), which respects
CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results.sections import Section

logger = logging.getLogger("mlenergy.diffusion")

# Counter energy and the power timeline's integral may differ by this much before a warning.
SELF_CHECK_TOLERANCE = 0.03


class ForeignProcessesError(RuntimeError):
    pass


@dataclass
class Exclusivity(Section):
    """results.json `gpu_exclusivity`: processes on the run's GPUs that are not its ranks."""

    exclusive: bool
    foreign_pids: dict[str, list[int]]
    pid_namespace_matches: bool


@dataclass
class NvmlCrossCheck(Section):
    """NVML's counters read directly around the measured phase against Zeus's window."""

    nvml_gpu_energy_j: dict[str, float]
    nvml_energy_j: float
    zeus_energy_j: float | None
    relative_difference: float | None


@dataclass
class TimelineSelfCheck(Section):
    """The counter's energy of the measured phase against the power timeline's integral; the
    run's own verdict is `within_tolerance`."""

    counter_energy_j: float
    timeline_energy_j: float
    timeline_gpu_energy_j: dict[str, float]
    relative_difference: float | None
    within_tolerance: bool
    tolerance: float


@dataclass
class EnergyCrossCheck(Section):
    """results.json `energy_cross_check`."""

    nvml: NvmlCrossCheck | None
    timeline: TimelineSelfCheck | None

    @classmethod
    def of(cls, nvml_reads: tuple, whole_gpu_energy: dict | None,
           timeline_energy: dict | None) -> EnergyCrossCheck:
        before, after = nvml_reads
        return cls(
            nvml=NvmlCrossCheck.from_results(nvml_cross_check(before, after, whole_gpu_energy)),
            timeline=TimelineSelfCheck.from_results(
                timeline_self_check(whole_gpu_energy, timeline_energy)))


def foreign_processes(per_gpu: dict[str, list[int]], own_pids: set[int],
                      own_per_gpu: int = 1) -> dict:
    """Processes on the run's GPUs that are not its ranks.

    NVML reports PIDs of the host's namespace; in a container they may match none of the ranks'.
    Then no PID can be trusted and a GPU counts as shared when it holds more contexts than the
    run's own ranks put there."""
    all_pids = {pid for pids in per_gpu.values() for pid in pids}
    namespaces_match = not all_pids or bool(all_pids & own_pids)
    foreign: dict[str, list[int]] = {}
    for gpu, pids in per_gpu.items():
        if namespaces_match:
            others = sorted(set(pids) - own_pids)
        else:
            others = sorted(pids)[own_per_gpu:] if len(pids) > own_per_gpu else []
        if others:
            foreign[gpu] = others
    return {"exclusive": not foreign, "foreign_pids": foreign,
            "pid_namespace_matches": namespaces_match, "processes": per_gpu}


def check_exclusive(gpus, own_pids: set[int], require: bool) -> dict:
    report = foreign_processes(gpus.keyed(gpus.access.compute_processes()), own_pids)
    if not report["exclusive"]:
        text = "; ".join(f"GPU {g}: PIDs {', '.join(str(pid) for pid in p)}"
                         for g, p in report["foreign_pids"].items() if p)
        if require:
            raise ForeignProcessesError(
                f"other processes use the run's GPUs ({text}); free the GPUs or drop "
                "--require_exclusive_gpus")
        logger.warning("Other processes use the run's GPUs (%s): their work is in the energy "
                       "figures. Pass --require_exclusive_gpus to refuse such runs.", text)
    return report


def relative_difference(reference: float | None, other: float | None) -> float | None:
    if reference is None or other is None or reference == 0:
        return None
    return (other - reference) / reference


def nvml_cross_check(before: dict | None, after: dict | None, zeus_gpu_energy: dict | None) -> dict | None:
    """Independent NVML reads around the benchmark window against Zeus's window."""
    if before is None or after is None:
        return None
    nvml = {gpu: after[gpu] - before[gpu] for gpu in after}
    zeus_total = sum(zeus_gpu_energy.values()) if zeus_gpu_energy else None
    diff = relative_difference(zeus_total, sum(nvml.values()))
    return {"nvml_gpu_energy_j": nvml, "nvml_energy_j": sum(nvml.values()),
            "zeus_energy_j": zeus_total, "relative_difference": diff}


def timeline_self_check(counter_energy: dict | None, timeline_energy: dict | None) -> dict | None:
    """The counter's energy of the whole measured phase against the power timeline's integral."""
    if not counter_energy or not timeline_energy:
        return None
    counter, integral = sum(counter_energy.values()), sum(timeline_energy.values())
    diff = relative_difference(counter, integral)
    ok = diff is not None and abs(diff) <= SELF_CHECK_TOLERANCE
    if not ok:
        logger.warning("Self-check: the power timeline integrates to %.1f J but the energy counter "
                       "says %.1f J over the measured phase (%+.1f%%, more than %.0f%%)",
                       integral, counter, 100 * (diff or 0), 100 * SELF_CHECK_TOLERANCE)
    return {"counter_energy_j": counter, "timeline_energy_j": integral,
            "timeline_gpu_energy_j": timeline_energy, "relative_difference": diff,
            "within_tolerance": ok, "tolerance": SELF_CHECK_TOLERANCE}


def check_run_gpus(gpus, require_exclusive: bool) -> Exclusivity | None:
    """Other processes on the run's GPUs, every node's; checked once the model is loaded, so that
    every rank holds its own context. None without GPUs."""
    if not gpus.measures_energy:
        return None
    own = set(runtime.all_gather_object(os.getpid()))
    report = None
    if gpus.ranks.is_local_main:
        report = check_exclusive(gpus, own, require_exclusive)
    reports = [r for r in runtime.all_gather_object(report) if r is not None]
    return Exclusivity(
        exclusive=all(r["exclusive"] for r in reports),
        foreign_pids={g: p for r in reports for g, p in r["foreign_pids"].items()},
        pid_namespace_matches=all(r["pid_namespace_matches"] for r in reports))


def merged_nvml_reads(per_rank: list[tuple]) -> tuple[dict | None, dict | None]:
    """Every node's (before, after) reads of read_nvml_energy as one pair over all GPUs."""
    return _merged(r[0] for r in per_rank), _merged(r[1] for r in per_rank)


def _merged(parts) -> dict | None:
    merged: dict = {}
    for part in parts:
        if part:
            merged.update(part)
    return merged or None


def read_nvml_energy(gpus) -> dict | None:
    """NVML's energy counters of this node's run GPUs, read directly, on local rank 0 (None
    elsewhere)."""
    if not gpus.measures_energy or not gpus.ranks.is_local_main:
        return None
    energy = gpus.access.nvml_energy()
    return gpus.keyed(energy) if energy is not None else None
