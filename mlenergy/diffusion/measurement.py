"""Time and energy windows.

One Zeus monitor per node, owned by its local rank 0, over exactly the GPUs the node's ranks
use. Every window is opened and closed behind a device synchronisation and a barrier on every
rank, so that a window holds all of the work of all ranks and nothing else. Energy that could not
be measured is None, never 0.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mlenergy.diffusion import runtime
from mlenergy.diffusion.runtime import Ranks

logger = logging.getLogger("mlenergy.diffusion")


@dataclass
class Measurement:
    """A window's time (s) and energies (J). gpu_energy maps global GPU index -> joules."""

    time: float
    gpu_energy: dict[str, float] | None
    cpu_energy: dict[str, float] | None = None
    dram_energy: dict[str, float] | None = None
    soc_energy: Any = None

    @property
    def total_gpu_energy(self) -> float | None:
        return None if self.gpu_energy is None else sum(self.gpu_energy.values())

    def to_dict(self) -> dict:
        return asdict(self)


class EnergyMeter:
    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self._monitor = None
        self._gpu_offset = ranks.node_rank * ranks.local_world_size
        if ranks.is_local_main:
            from zeus.monitor import ZeusMonitor

            gpus = list(range(ranks.local_world_size)) if ranks.device.type == "cuda" else None
            # Windows are synchronised here, on every rank, not by Zeus on one.
            self._monitor = ZeusMonitor(gpu_indices=gpus, approx_instant_energy=False)

    @property
    def measures_gpu_energy(self) -> bool:
        return self.ranks.device.type == "cuda"

    def _fence(self) -> None:
        runtime.synchronize(self.ranks.device)
        runtime.barrier()

    def begin(self, name: str) -> None:
        self._fence()
        if self._monitor is not None:
            self._monitor.begin_window(name, sync_execution=False)

    def end(self, name: str) -> Measurement | None:
        """Close a window on every rank; the whole run's measurement comes back on rank 0."""
        self._fence()
        local = None
        if self._monitor is not None:
            local = self._node_measurement(name, self._monitor.end_window(name, sync_execution=False))
        if self.ranks.num_nodes == 1:
            return local if self.ranks.is_main else None
        gathered = [m for m in runtime.all_gather_object(local) if m is not None]
        return _merge_nodes(gathered) if self.ranks.is_main else None

    def _node_measurement(self, name: str, zeus) -> Measurement:
        gpu = None
        if self.measures_gpu_energy:
            gpu = {str(self._gpu_offset + i): float(j) for i, j in zeus.gpu_energy.items()}
            bad = [k for k, j in gpu.items() if not math.isfinite(j) or j <= 0]
            if bad or len(gpu) != self.ranks.local_world_size:
                logger.warning("Window %s: no usable energy reading for GPU(s) %s (window %.3f s); "
                               "its energy is reported as unmeasured.", name, bad, zeus.time)
                gpu = None
        return Measurement(time=float(zeus.time), gpu_energy=gpu, cpu_energy=zeus.cpu_energy,
                           dram_energy=zeus.dram_energy, soc_energy=None)


def _merge_nodes(parts: list[Measurement]) -> Measurement:
    gpu: dict[str, float] | None = {}
    for part in parts:
        if part.gpu_energy is None:
            gpu = None
            break
        gpu.update(part.gpu_energy)
    return Measurement(time=max(p.time for p in parts), gpu_energy=gpu)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 1e9


class Stopwatch:
    """Wall time of a region on this rank (for model loading and other unmetered phases)."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
