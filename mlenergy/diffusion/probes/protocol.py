"""What every probe is: started once per point (when its hooks go in), told where each iteration
begins and ends, and, after the measured phase, gathering what every rank saw into one typed
section (sections.py) on rank 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlenergy.diffusion.results.sections import Section


@dataclass
class MeasuredPhase:
    """What the run loop knows once the measured iterations are over: the phase's window (every
    rank), its measurements (rank 0; None elsewhere) and NVML's counters read around it (this
    rank's node: before, after)."""

    window: tuple[float, float]
    # probes/energy.py Measurement per iteration and for the whole phase.
    iterations: list[Any]
    whole: Any
    nvml_reads: tuple

    @property
    def iteration_energies(self) -> list[float | None]:
        return [m.total_gpu_energy if m is not None else None for m in self.iterations]

    @property
    def iteration_times(self) -> list[float]:
        return [m.time for m in self.iterations if m is not None]


class Probe(Protocol):
    """One thing that watches a run, built by its class's `start(plan, gpus, pipeline)` once the
    process's baseline is taken. Every rank calls every method in the same order: `gather` is
    collective."""

    def begin_iteration(self, measured: bool) -> None: ...

    def end_iteration(self, measured: bool) -> None: ...

    def gather(self, phase: MeasuredPhase) -> Section | None:
        """Every rank's observations as one section on rank 0; None on the other ranks."""
        ...
