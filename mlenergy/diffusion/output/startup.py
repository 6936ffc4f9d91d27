"""Where the time goes between a process's start and a point's first measured window: results.json
`startup`. A campaign books GPUs for all of it, so it is measured like the rest.

Phases paid once per process (imports, the process group, reading the inputs, loading the
pipeline, the idle baseline) are recorded with every point the process measured, beside the
group's size and the point's place in it; the point's own phases follow.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from mlenergy.diffusion.results.sections import Section


@dataclass
class StartupSection(Section):
    """results.json `startup`: seconds per phase (None where not measured)."""

    group_size: int
    group_position: int
    # Paid once by the process, for every point of its group.
    imports_s: float | None
    process_group_s: float | None
    inputs_s: float | None
    load_s: float | None
    idle_baseline_s: float | None
    # This point's own.
    point_setup_s: float | None
    warmup_s: float | None
    # Dynamo's tracing and code generation in the warm-up; then what the first call cost beyond
    # a steady one (compiling, loading kernels, tuning them).
    warmup_compile_s: float | None
    first_call_overhead_s: float | None
    # From the process's start (first point) or the previous point's end.
    to_first_window_s: float


def _process_start_time() -> float | None:
    """When this process began (wall clock), from the kernel; None where psutil cannot say."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - a missing start time is reported as missing
        return None


class StartupClock:
    """Wall-clock phases of the process, then of each point."""

    def __init__(self):
        self.process_started = _process_start_time()
        self.main_entered = time.time()
        self.process_phases: dict[str, float] = {}
        self.point_phases: dict[str, float] = {}
        self.point_started = self.process_started or self.main_entered

    @contextlib.contextmanager
    def process_phase(self, name: str):
        """A phase of the launch's start-up; one named again adds to it."""
        started = time.time()
        try:
            yield
        finally:
            self.process_phases[name] = (self.process_phases.get(name, 0.0)
                                         + time.time() - started)

    @contextlib.contextmanager
    def point_phase(self, name: str):
        """A phase of the point now running; one named again adds to it."""
        started = time.time()
        try:
            yield
        finally:
            self.point_phases[name] = self.point_phases.get(name, 0.0) + time.time() - started

    def next_point(self, started: float | None = None) -> None:
        """A new point begins: the first at the process's start, later ones where the one
        before them ended."""
        self.point_phases = {}
        if started is not None:
            self.point_started = started

    def section(self, group_size: int, position: int, first_window_start: float,
                warmup) -> StartupSection:
        """The startup of the point now measured (`position` counts from 1; `warmup` its
        WarmupRecord)."""
        compile_seconds = [s for _, s in warmup.compiles]
        later = warmup.iteration_times[1:]
        imports = (self.main_entered - self.process_started
                   if self.process_started is not None else None)
        once = self.process_phases
        return StartupSection(
            group_size=group_size, group_position=position, imports_s=imports,
            process_group_s=once.get("process_group"), inputs_s=once.get("inputs"),
            load_s=once.get("load"), idle_baseline_s=once.get("idle_baseline"),
            point_setup_s=self.point_phases.get("setup"),
            warmup_s=self.point_phases.get("warmup"),
            warmup_compile_s=sum(compile_seconds) if None not in compile_seconds else None,
            first_call_overhead_s=warmup.iteration_times[0] - min(later) if later else None,
            to_first_window_s=first_window_start - self.point_started)
