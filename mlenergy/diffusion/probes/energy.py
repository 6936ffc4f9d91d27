"""Energy windows.

One monitor per node, owned by its local rank 0, over exactly the GPUs the node's ranks use.
Every window is opened and closed behind a fence on every rank (device synchronisation, then a
barrier), so that a window holds all of the work of all ranks and nothing else. Energy that could
not be measured is None, never 0.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from mlenergy.diffusion.probes.gpus import RunGpus
from mlenergy.diffusion.probes.readings import WindowReading
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results.sections import Section

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

    @classmethod
    def merge_nodes(cls, parts: list[Measurement]) -> Measurement:
        """One window from every node's: the longest time, every node's GPUs; unmeasured when
        any node's energy is."""
        gpu: dict[str, float] | None = {}
        for part in parts:
            if part.gpu_energy is None:
                gpu = None
                break
            gpu.update(part.gpu_energy)
        return cls(time=max(p.time for p in parts), gpu_energy=gpu)


@dataclass
class HostEnergy(Section):
    """results.json `host_energy`: the host's RAPL energy over the measured phase."""

    source: str
    cpu_energy_j: float | None
    dram_energy_j: float | None

    @classmethod
    def of(cls, whole: Measurement) -> HostEnergy:
        return cls(source="RAPL through Zeus; never added into the GPU figures",
                   cpu_energy_j=_total(whole.cpu_energy), dram_energy_j=_total(whole.dram_energy))


def _total(energy: dict | None) -> float | None:
    return sum(energy.values()) if energy else None


class EnergyMeter:
    def __init__(self, gpus: RunGpus):
        self.gpus = gpus
        self.ranks = gpus.ranks
        self._windows = None
        self._opened: dict[str, float] = {}
        # name -> (opened, closed): wall-clock times of this rank's fences, taken where the
        # counters are read (before any gathering across nodes), for the timeline and stages.
        self.bounds: dict[str, tuple[float, float]] = {}
        if self.ranks.is_local_main:
            if gpus.measures_energy:
                self._windows = gpus.access.energy_monitor()
            else:
                self._windows = _TimeOnly()

    def begin(self, name: str) -> None:
        self.gpus.fence()
        self._opened[name] = time.time()
        if self._windows is not None:
            self._windows.begin(name)

    def end(self, name: str) -> Measurement | None:
        """Close a window on every rank; the whole run's measurement comes back on rank 0."""
        self.gpus.fence()
        self.bounds[name] = (self._opened.pop(name), time.time())
        local = None
        if self._windows is not None:
            local = self._node_measurement(name, self._windows.end(name))
        if self.ranks.num_nodes == 1:
            return local if self.ranks.is_main else None
        gathered = [m for m in runtime.all_gather_object(local) if m is not None]
        return Measurement.merge_nodes(gathered) if self.ranks.is_main else None

    def _node_measurement(self, name: str, reading) -> Measurement:
        gpu = None
        if self.gpus.measures_energy:
            gpu = {self.gpus.key(i): float(j) for i, j in reading.gpu_energy.items()}
            bad = [k for k, j in gpu.items() if not math.isfinite(j) or j <= 0]
            if bad or len(gpu) != self.gpus.count:
                logger.warning("Window %s: no usable energy reading for GPU(s) %s (window %.3f s); "
                               "its energy is reported as unmeasured.", name,
                               ", ".join(bad) or "(a GPU's reading is missing)", reading.time)
                gpu = None
        return Measurement(time=float(reading.time), gpu_energy=gpu,
                           cpu_energy=reading.cpu_energy, dram_energy=reading.dram_energy)


class _TimeOnly:
    """Windows without GPUs: time, and host energy where Zeus finds RAPL."""

    def __init__(self):
        from zeus.monitor import ZeusMonitor

        self._monitor = ZeusMonitor(approx_instant_energy=False)

    def begin(self, name: str) -> None:
        self._monitor.begin_window(name, sync_execution=False)

    def end(self, name: str) -> WindowReading:
        m = self._monitor.end_window(name, sync_execution=False)
        return WindowReading(time=float(m.time), gpu_energy={}, cpu_energy=m.cpu_energy,
                             dram_energy=m.dram_energy)
